"""Reference parity: our optimizers against well-kept implementations of the same method.

Each test runs ours and the reference from the same float64 start on the same random
problem for dozens of steps and asserts agreement to a tight tolerance; the
hyperparameter mapping between the two APIs is written next to each test.
References: pytorch-optimizer 4.x (``pytorch_optimizer``) for Lion, Adan, AdamP, SGDP,
SophiaH and Schedule-Free AdamW; ``torch.optim`` where a method reduces to AdamW or SGD.
timm is not installed on purpose (it pulls torchvision), so its Lion/Adan/AdamP are not
compared. Methods without a reference (Lion-κ maps, AM-SGD/AM-AdamW, CLASSP, SCALE's
normalised rules, SophiaG) are checked by hand against their papers' update rules in the
elementwise optimizer tests.

Achieved max |difference| after 40 steps (parameters of order 1), recorded when written:
Lion 0, Adan 1e-16 (3e-9 with max_grad_norm: the reference takes the global norm in
float32), AdamP 1.5e-15, SGDP 2e-16, SophiaH 0, Schedule-Free AdamW 9e-15 (the
reference adds 1e-15 inside the square root), AdamP/SGDP without projection vs torch
AdamW/SGD 2e-16 / 0, SCALE's vector rule vs torch AdamW 0.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from optarena.optim import Adan, AdamP, Lion, SCALE, SGDP, ScheduleFreeAdamW, SophiaH

po = pytest.importorskip("pytorch_optimizer")

STEPS = 40
TOL = 1e-12


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    shapes = [(6, 5), (5,), (3, 2, 2, 2)]
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _run_pair(ours: Callable[[list[torch.Tensor]], Any], reference: Callable[[list[torch.Tensor]], Any],
              steps: int = STEPS, scale_invariant: bool = False) -> float:
    """Feed both optimizers the same random gradients; return the max |difference| of parameters."""
    a, b = _start(), _start()
    opt_a, opt_b = ours(a), reference(b)
    gen = torch.Generator().manual_seed(12)
    for _ in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            if scale_invariant and x.ndim > 1:  # remove each row's radial part: the weight looks normalised
                rows, grows = x.reshape(x.shape[0], -1), g.view(x.shape[0], -1)
                grows -= rows * (rows * grows).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True)
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# --- Lion: identical API (po's weight_decouple=True is decoupled decay lr*wd) -----------------------


@pytest.mark.parametrize("foreach", [True, False])
def test_lion_matches_pytorch_optimizer(foreach: bool) -> None:
    kw = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    diff = _run_pair(lambda p: Lion(p, **kw, foreach=foreach), lambda p: po.Lion(p, **kw))
    assert diff <= TOL


# --- Adan: betas are the weights on the old value in both (the reference code's convention);
#     our no_prox=False (proximal decay) is po's weight_decouple=False -------------------------------


@pytest.mark.parametrize(("no_prox", "weight_decay"), [(False, 0.0), (False, 0.05), (True, 0.05)])
def test_adan_matches_pytorch_optimizer(no_prox: bool, weight_decay: float) -> None:
    kw = dict(lr=1e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=weight_decay)
    diff = _run_pair(lambda p: Adan(p, **kw, no_prox=no_prox),
                     lambda p: po.Adan(p, **kw, weight_decouple=no_prox))
    assert diff <= TOL


def test_adan_gradient_clipping_matches_pytorch_optimizer() -> None:
    kw = dict(lr=1e-2, weight_decay=0.02, max_grad_norm=0.5)
    diff = _run_pair(lambda p: Adan(p, **kw), lambda p: po.Adan(p, **kw))
    assert diff <= 1e-7  # po computes the global norm in float32


# --- AdamP / SGDP: same hyperparameters; po puts AdamP's eps before the bias correction
#     ((sqrt(v) + eps) / sqrt(1 - b2^t)) where the paper's code puts it after, so eps is
#     set to 1e-16 to make the placement irrelevant. The gradients are made scale-invariant
#     so that the projection is exercised. ----------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_pytorch_optimizer(nesterov: bool) -> None:
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.1, delta=0.1, wd_ratio=0.1, nesterov=nesterov)
    diff = _run_pair(lambda p: AdamP(p, **kw), lambda p: po.AdamP(p, **kw), scale_invariant=True)
    assert diff <= TOL


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_matches_pytorch_optimizer(nesterov: bool) -> None:
    kw = dict(lr=1e-2, momentum=0.9, eps=1e-16, weight_decay=0.1, delta=0.1, wd_ratio=0.1, nesterov=nesterov)
    diff = _run_pair(lambda p: SGDP(p, **kw), lambda p: po.SGDP(p, **kw), scale_invariant=True)
    assert diff <= TOL


def test_adamp_projection_changes_the_trajectory() -> None:
    """Guard for the two tests above: on scale-invariant weights AdamP is not AdamW."""
    kw = dict(lr=1e-2, eps=1e-8, weight_decay=0.1)
    diff = _run_pair(lambda p: AdamP(p, **kw), lambda p: torch.optim.AdamW(p, **kw), scale_invariant=True)
    assert diff > 1e-3


def test_adamp_without_projection_is_torch_adamw() -> None:
    """delta -> 0 never projects, and then AdamP's arithmetic is torch.optim.AdamW's, eps placement included."""
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    diff = _run_pair(lambda p: AdamP(p, **kw, delta=1e-300), lambda p: torch.optim.AdamW(p, **kw, foreach=False))
    assert diff <= TOL


def test_sgdp_without_projection_is_torch_sgd() -> None:
    """delta -> 0 and no weight decay: SGDP is torch.optim.SGD with (Nesterov) momentum."""
    kw = dict(lr=1e-2, momentum=0.9, nesterov=True)
    diff = _run_pair(lambda p: SGDP(p, **kw, delta=1e-300), lambda p: torch.optim.SGD(p, **kw, foreach=False))
    assert diff <= TOL


# --- SophiaH: po's update is lr_po clip(m / max(h, eps_po), -p, p) with decay lr_po wd_po;
#     ours is lr clip(m / max(rho h, eps), -1, 1) with decay lr wd. They agree with
#     lr = lr_po p, rho = p, eps = p eps_po, wd = wd_po / p, hessian_interval = update_period.
#     po refreshes h inside step() from grads built with create_graph=True at steps 1, 1+k, ...;
#     we call update_hessian() before step() when hessian_step_due(), with the same RNG state.


def test_sophia_h_matches_pytorch_optimizer() -> None:
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    w0 = 0.3 * torch.randn(3, 5, generator=gen, dtype=torch.float64)

    def loss_fn(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ w.T + b) - y).square().mean()

    ours = [w0.clone().requires_grad_(), torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    ref = [w0.clone().requires_grad_(), torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    lr_po, p_po, eps_po, wd_po = 0.05, 0.02, 1e-12, 0.1
    opt = SophiaH(ours, lr=lr_po * p_po, rho=p_po, eps=p_po * eps_po, weight_decay=wd_po / p_po,
                  betas=(0.96, 0.99), hessian_interval=5)
    opt_ref = po.SophiaH(ref, lr=lr_po, p=p_po, eps=eps_po, weight_decay=wd_po, betas=(0.96, 0.99),
                         update_period=5)
    for t in range(STEPS):
        opt.zero_grad()
        loss_fn(*ours).backward()
        if opt.hessian_step_due():
            torch.manual_seed(100 + t)
            opt.update_hessian(lambda: loss_fn(*ours))
        opt.step()
        opt_ref.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss_fn(*ref), ref, create_graph=True)
        for p, g in zip(ref, grads):
            p.grad = g  # what loss.backward(create_graph=True) would leave, without the reference cycle
        torch.manual_seed(100 + t)
        opt_ref.step()
    assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= TOL
    assert loss_fn(*ours).item() < loss_fn(w0, torch.zeros(3, dtype=torch.float64)).item()


# --- Schedule-Free AdamW: identical hyperparameters; po adds 1e-15 inside the square root of
#     the bias-corrected second moment, hence 1e-11 rather than 1e-12. ------------------------------


@pytest.mark.parametrize(("weight_decay", "warmup_steps", "r"), [(0.0, 0, 0.0), (0.1, 5, 0.5)])
def test_schedule_free_adamw_matches_pytorch_optimizer(weight_decay: float, warmup_steps: int, r: float) -> None:
    kw = dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
              weight_lr_power=2.0, eps=1e-8)
    made: list[Any] = []

    def ours(p: list[torch.Tensor]) -> Any:
        made.append(ScheduleFreeAdamW(p, **kw))
        return made[-1]

    def reference(p: list[torch.Tensor]) -> Any:
        made.append(po.ScheduleFreeAdamW(p, **kw))
        return made[-1]

    assert _run_pair(ours, reference) <= 1e-11
    a_params = made[0].param_groups[0]["params"]
    b_params = made[1].param_groups[0]["params"]
    made[0].eval()
    made[1].eval()  # the averaged point x
    assert max((x - y).abs().max().item() for x, y in zip(a_params, b_params)) <= 1e-11


# --- SCALE's vector rule is torch.optim.AdamW -------------------------------------------------------


def test_scale_vector_groups_are_torch_adamw() -> None:
    kw = dict(lr=1e-2, weight_decay=0.1)
    diff = _run_pair(
        lambda p: SCALE([{"params": p, "role": "vector"}], adamw_betas=(0.9, 0.95), adamw_eps=1e-8, **kw),
        lambda p: torch.optim.AdamW(p, betas=(0.9, 0.95), eps=1e-8, foreach=False, **kw),
    )
    assert diff <= TOL
