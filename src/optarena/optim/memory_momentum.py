"""Adaptive Memory momentum: AM-SGD and AM-AdamW, a momentum coefficient chosen every step.

Topollai, Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep
Learning Optimization" (arXiv:2510.04988, AISTATS 2026). No official
code is public; the β formula below is derived from the paper's model, and AM-AdamW's
details follow an unofficial implementation (lower confidence, see below).

**Model.** Around ``x_t`` the loss is modelled by two planes, the current gradient
``f + <g, s>`` and the memory ``f̂ + <d, s>``, and the step ``s`` minimises
``max(planes) + ‖s‖²/(2η) + λ‖s + η d‖²/(2η)``. Its dual weight β on the memory plane
gives ``d <- ((β + λ) d + (1 - β) g) / (1 + λ)`` and ``x <- x - η d``; maximising the
dual over β with the estimate ``f̂ - f ≈ η <g, d>`` gives

    β = clip( (‖g‖² + 2λ<g, d> - λ‖d‖²) / ‖d - g‖²,  0, β_max )
      = clip( (1 + λ) ‖g‖² / ‖d - g‖² - λ,  0, β_max )

**AM-SGD** takes every inner product over *all* parameters of all groups (one β for the
model; distributed training needs an all-reduce of two scalars). First step: ``d = g``.
``‖d - g‖ = 0`` gives β = 0 (then the update is ``d = g`` whatever β is).
``weight_decay`` is coupled (added to the gradient) as in ``torch.optim.SGD``.

**AM-AdamW** (per tensor, lower confidence). The proximal terms use the diagonal
metric ``P = (1 - β_max ∏_{i<t} β_i)(sqrt(v̂) + eps)`` (Adam's denominator, with a first-
moment bias correction for the varying β) for ``‖s‖²`` and ``P²`` for the memory term,
which gives, with ``a = λ P`` and ``M = 1 / (P (1 + a))`` elementwise::

    v <- b2 v + (1 - b2) g²;   u = d - g
    β  = clip( [ (η_{t-1}/η_t) <g, d/P + wd θ> - <u, M (g + a d)> ] / <u, M u>,  0, β_max )
    d <- d - (1 - β) u / (1 + a)            # = (I + λP)⁻¹((1 - β) g + (λP + β) d)
    θ <- θ (1 - η wd) - η d / P

The first term estimates ``(f̂ - f)/η`` by the previous displacement (with the current
``P`` and ``θ`` standing in for the previous ones). On each tensor's first step β =
β_max and ``d = 0``, which reproduces Adam's first step. With λ = 0 and β fixed this is
AdamW. The unofficial code's defaults are β_max = 0.89 and λ = 0.1.

State: AM-SGD one tensor (4 bytes/param fp32); AM-AdamW two tensors (8 bytes/param)
plus one scalar per tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import CopiesItsAttributes, GroupwiseOptimizer, groups_with_grads, run_closure
from optarena.optim.kernels import flat_slices
from optarena.optim.kernels.memory import AMSGDPasses, am_adamw_fused_step
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_hparams, check_nonnegative, check_positive, check_unit_interval

__all__ = ["AMAdamW", "AMSGD"]


def _check_lambda_beta(name: str, model_lambda: float, beta_max: float) -> None:
    check_nonnegative(name, "model_lambda", model_lambda)
    check_unit_interval(name, "beta_max", beta_max)


class AMSGD(CopiesItsAttributes, torch.optim.Optimizer):
    """AM-SGD: SGD whose momentum coefficient comes from a two-plane model (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 0.1).
        model_lambda: λ, weight of the memory proximal term (>= 0, default 0.1).
        beta_max: upper clip of β in [0, 1) (default 0.9).
        weight_decay: L2 penalty added to the gradient (>= 0, default 0).
        foreach: multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one kernel per pass and tensor (default False; :mod:`optarena.optim.kernels.memory`).

    ``model_lambda`` and ``beta_max`` are optimizer-wide (β is one number for the model).
    ``last_beta`` holds the β of the latest step (a 0-d tensor).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        model_lambda: float = 0.1,
        beta_max: float = 0.9,
        weight_decay: float = 0.0,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("AMSGD", lr=lr, weight_decay=weight_decay)
        _check_lambda_beta("AMSGD", model_lambda, beta_max)
        self.model_lambda = model_lambda
        self.beta_max = beta_max
        self.last_beta: torch.Tensor | None = None
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, foreach=foreach, fused=fused))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        lam = self.model_lambda
        passes = []
        for group, params, grads in groups_with_grads(self):
            wd = group["weight_decay"]
            remembered: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" in state:
                    for lst, t in zip(remembered, (p, g, state["momentum_buffer"])):
                        lst.append(t)
                else:  # first step: d = h = g + wd θ
                    h = g.add(p, alpha=wd) if wd != 0 else g
                    state["momentum_buffer"] = h.clone()
                    p.add_(h, alpha=-group["lr"])
            passes.append(AMSGDPasses(group, *remembered, block_sums=_am_sgd_sums, block_update=_am_sgd_update))
        sums = [s for group_passes in passes for s in group_passes.sums()]  # pass 1, per tensor or block
        if not sums:
            return loss
        device = sums[0].device
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in sums) else torch.float32
        grad_sq, diff_sq = torch.stack([t.to(device=device, dtype=dtype) for t in sums]).sum(0)
        beta = torch.where(diff_sq > 0, ((1 + lam) * grad_sq / diff_sq - lam).clamp(0.0, self.beta_max),
                           torch.zeros_like(diff_sq))
        self.last_beta = beta
        weight = (1 - beta) / (1 + lam)  # d <- d + weight (h - d)
        for group_passes in passes:  # pass 2
            group_passes.update(weight)
        return loss


def _am_sgd_sums(hs: list[torch.Tensor], ds: list[torch.Tensor]) -> torch.Tensor:
    """[Σ‖h‖², Σ‖h - d‖²] over a block of tensors, h = g + wd θ."""
    acc = torch.promote_types(hs[0].dtype, torch.float32)
    diffs = torch._foreach_sub(hs, ds)
    return torch.stack([torch.stack(torch._foreach_norm(hs, 2, dtype=acc)).square().sum(),
                        torch.stack(torch._foreach_norm(diffs, 2, dtype=acc)).square().sum()])


def _am_sgd_update(ps: list[torch.Tensor], hs: list[torch.Tensor], ds: list[torch.Tensor], *,
                   weight: torch.Tensor, lr: float) -> None:
    """d <- d + weight (h - d);  θ <- θ - lr d on a block of tensors."""
    diffs = torch._foreach_sub(hs, ds)
    torch._foreach_mul_(diffs, weight.to(device=ds[0].device, dtype=ds[0].dtype))
    torch._foreach_add_(ds, diffs)
    torch._foreach_add_(ps, ds, alpha=-lr)


class AMAdamW(GroupwiseOptimizer):
    """AM-AdamW: AdamW with a per-tensor adaptive momentum coefficient (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 1e-3).
        betas: (β_max, b2): the clip of the adaptive β1 and the second-moment decay (default (0.89, 0.999)).
        eps: added to Adam's denominator (default 1e-8).
        weight_decay: decoupled, multiplied by lr (default 0.01).
        model_lambda: λ of the memory proximal term (default 0.1).
        fused: two passes per tensor, the inner products and the update (default False;
            :mod:`optarena.optim.kernels.memory`).

    Updates are per tensor (β needs three reductions per tensor), so there is no foreach flag.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.89, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        model_lambda: float = 0.1,
        fused: bool = False,
    ) -> None:
        check_hparams("AMAdamW", lr=lr, betas=betas, weight_decay=weight_decay)
        _check_lambda_beta("AMAdamW", model_lambda, betas[0])
        check_positive("AMAdamW", "eps", eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, model_lambda=model_lambda,
                        fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        beta_max, beta2 = group["betas"]
        lr, eps, wd, lam = group["lr"], group["eps"], group["weight_decay"], group["model_lambda"]
        group["step"] = t = group.get("step", 0) + 1
        prev_lr = group.get("prev_lr", lr)
        gap_scale = prev_lr / lr if lr > 0 else 1.0
        group["prev_lr"] = lr
        bc2_sqrt = math.sqrt(1 - beta2**t)
        for p, g in zip(params, grads):
            state = self.state[p]
            first = "exp_avg" not in state
            if first:
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
                state["beta_product"] = torch.ones(
                    (), device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
            tensors = (p, g, state["exp_avg"], state["exp_avg_sq"])
            tensor_step = (group.get("fused") and am_adamw_fused_step(*tensors)) or _am_adamw_tensor
            tensor_step(*tensors, state["beta_product"], first=first, beta_max=beta_max, beta2=beta2,
                        bc2_sqrt=bc2_sqrt, eps=eps, lr=lr, wd=wd, lam=lam, gap_scale=gap_scale)


def _am_adamw_tensor(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """One AM-AdamW step on one tensor: pass 1 sums β's three inner products, pass 2 updates.

    Both passes run block by block (cache-sized slices on CPU) and recompute the cheap
    elementwise quantities instead of storing tensor-sized temporaries.
    """
    acc = prod.dtype
    correction = (1 - beta_max * prod).to(p.dtype)
    blocks = flat_slices(p, g, d, v)

    def preconditioner(vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precond = vb.sqrt().div_(bc2_sqrt).add_(eps).mul_(correction)  # P
        return precond, precond * lam + 1  # P, 1 + a with a = λP

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.dot(a, b) if a.ndim == 1 else (a * b).sum()).to(acc)

    for _, gb, _, vb in blocks:
        vb.mul_(beta2).addcmul_(gb, gb, value=1 - beta2)
    if first:
        beta = torch.full((), beta_max, device=p.device, dtype=acc)
    else:
        sums = torch.zeros(3, device=p.device, dtype=acc)  # gap, pull, curvature
        for pb, gb, db, vb in blocks:
            precond, damp = preconditioner(vb)
            weighted = (db - gb).div_(precond * damp)  # M u, with M = 1 / (P (1 + a))
            sums += torch.stack([
                dot(gb, (db / precond).add_(pb, alpha=wd)),  # <g, d/P + wd θ>
                dot(weighted, gb + (damp - 1) * db),  # <u, M (g + a d)>
                dot(weighted, db - gb),  # <u, M u>
            ])
        gap, pull, curvature = sums[0] * gap_scale, sums[1], sums[2]
        beta = torch.where(curvature > 0, ((gap - pull) / curvature).clamp(0.0, beta_max),
                           torch.full_like(curvature, beta_max))
    keep = (1 - beta).to(p.dtype)
    for pb, gb, db, vb in blocks:
        precond, damp = preconditioner(vb)
        db.sub_((db - gb).mul_(keep).div_(damp))  # d <- d - (1 - β) u / (1 + a)
        if wd != 0:
            pb.mul_(1 - lr * wd)
        pb.addcdiv_(db, precond, value=-lr)
    prod.view(1).mul_(beta)  # through a view: torch.compile (2.13, CPU) drops in-place updates of 0-d float64 inputs


_PAPER = Paper("Adaptive Memory Momentum via a Model-Based Framework for Deep Learning Optimization",
               "2510.04988", 2025)

register(
    OptimizerSpec(
        name="am_sgd",
        cls=AMSGD,
        family="elementwise",
        defaults=dict(lr=0.1, model_lambda=0.1, beta_max=0.9, weight_decay=0.0),
        search_space=dict(lr=FloatRange(3e-3, 3.0), weight_decay=FloatRange(1e-6, 1e-3)),
        state_bytes=4.0,
        paper=_PAPER,
        description="SGD with a model-wide momentum coefficient from a two-plane proximal model",
    )
)

register(
    OptimizerSpec(
        name="am_adamw",
        cls=AMAdamW,
        family="elementwise",
        defaults=dict(lr=1e-3, betas=(0.89, 0.95), eps=1e-8, weight_decay=0.1, model_lambda=0.1),
        search_space=dict(lr=FloatRange(3e-4, 3e-2), weight_decay=FloatRange(1e-3, 0.3)),
        state_bytes=8.0,
        paper=_PAPER,
        description="AdamW with a per-tensor adaptive momentum coefficient (unofficial-code details)",
    )
)
