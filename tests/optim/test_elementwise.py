"""Hand-computed checks of the elementwise family against the update rules of their papers.

Each test writes the paper's update out with plain tensor arithmetic on a tiny float64
tensor and compares it with the optimizer, for the methods (or options) that have no
reference implementation: Lion-κ maps, Adan's first steps, SophiaG's Gauss–Newton–Bartlett
estimate and the Hessian hook, SophiaH on a diagonal quadratic, AM-SGD and AM-AdamW,
CLASSP, SCALE's rules, AdamP's projection and Schedule-Free's averaged point.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optarena.optim import (
    CLASSP,
    SCALE,
    Adan,
    AMAdamW,
    AMSGD,
    Lion,
    ScheduleFreeAdamW,
    SophiaG,
    SophiaH,
    create_optimizer,
)
from optarena.optim.scale_invariance import project_scale_invariant

D = torch.float64


def _tensor(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _grads(steps: int, shapes: list[tuple[int, ...]], seed: int = 5) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=D) for s in shapes] for _ in range(steps)]


def _apply(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


# --- Lion-κ -------------------------------------------------------------------------------------


def _polar(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


KAPPA_MAPS = {
    "sign": torch.sign,
    "l2": lambda c: math.sqrt(c.numel()) * c / c.norm(),
    "identity": lambda c: c,
    "smooth_sign": lambda c: c / torch.sqrt(c * c + 1e-3),
    "my_tanh": torch.tanh,  # a user-supplied map
}


@pytest.mark.parametrize("kappa", list(KAPPA_MAPS))
@pytest.mark.parametrize("foreach", [True, False])
def test_lion_kappa_maps_match_the_update_rule(kappa: str, foreach: bool) -> None:
    lr, (b1, b2), wd = 0.05, (0.9, 0.99), 0.1
    shapes = [(3, 4), (4,)]
    params = [_tensor(*s, seed=i) for i, s in enumerate(shapes)]
    expected = [p.clone() for p in params]
    moms = [torch.zeros_like(p) for p in params]
    arg = torch.tanh if kappa == "my_tanh" else kappa
    opt = Lion(params, lr=lr, betas=(b1, b2), weight_decay=wd, kappa=arg, kappa_eps=1e-3, foreach=foreach)
    for grads in _grads(3, shapes):
        _apply(opt, params, grads)
        for i, g in enumerate(grads):
            c = b1 * moms[i] + (1 - b1) * g
            expected[i] = expected[i] * (1 - lr * wd) - lr * KAPPA_MAPS[kappa](c)
            moms[i] = b2 * moms[i] + (1 - b2) * g
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-12)


def test_lion_sign_of_zero_is_zero() -> None:
    p = torch.ones(3, dtype=D)
    opt = Lion([p], lr=0.1)
    p.grad = torch.tensor([1.0, 0.0, -2.0], dtype=D)
    opt.step()
    assert p.tolist() == pytest.approx([0.9, 1.0, 1.1])


def test_lion_nuclear_map_is_a_scaled_orthogonalisation() -> None:
    """κ = nuclear norm: the direction is √max(m, n) times (Newton–Schulz's approximation of) U Vᵀ."""
    p = torch.zeros(4, 6, dtype=D)
    opt = Lion([p], lr=1.0, betas=(0.0, 0.0), kappa="nuclear")
    g = _tensor(4, 6, seed=3)
    p.grad = g.clone()
    opt.step()
    direction = -p
    target = math.sqrt(6) * _polar(g)
    cosine = (direction * target).sum() / (direction.norm() * target.norm())
    assert cosine > 0.95
    singular = torch.linalg.svdvals(direction / math.sqrt(6))
    assert singular.min() > 0.5 and singular.max() < 1.3  # NS5's band around 1
    assert math.isclose(direction.square().mean().sqrt().item(), 1.0, rel_tol=0.3)  # RMS about 1, like sign


# --- Adan ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("no_prox", [False, True])
def test_adan_first_two_steps_by_hand(no_prox: bool) -> None:
    lr, (b1, b2, b3), eps, wd = 0.01, (0.98, 0.92, 0.99), 1e-8, 0.05
    p = _tensor(5, seed=1)
    theta = p.clone()
    opt = Adan([p], lr=lr, betas=(b1, b2, b3), eps=eps, weight_decay=wd, no_prox=no_prox)
    g1, g2 = _tensor(5, seed=2), _tensor(5, seed=3)
    m, v, n, prev = torch.zeros(5, dtype=D), torch.zeros(5, dtype=D), torch.zeros(5, dtype=D), g1
    for t, g in enumerate((g1, g2), start=1):
        d = g - prev  # the first difference is zero
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        denom = torch.sqrt(n / (1 - b3**t)) + eps
        step = lr * m / ((1 - b1**t) * denom) + lr * b2 * v / ((1 - b2**t) * denom)
        theta = theta * (1 - lr * wd) - step if no_prox else (theta - step) / (1 + lr * wd)
        prev = g
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p, theta, rtol=1e-12, atol=1e-14)


def test_adan_does_not_modify_the_gradient_when_clipping() -> None:
    p = _tensor(4, seed=1)
    opt = Adan([p], lr=0.01, max_grad_norm=0.1)
    g = 10 * _tensor(4, seed=2)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    torch.testing.assert_close(opt.state[p]["prev_grad"], g * 0.1 / (g.norm() + 1e-8))


# --- Sophia --------------------------------------------------------------------------------------


def _softmax_regression(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 4, generator=gen, dtype=D)
    labels = torch.randint(0, 3, (20,), generator=gen)
    w = (0.3 * torch.randn(3, 4, generator=gen, dtype=D)).requires_grad_()

    def loss() -> torch.Tensor:
        return F.cross_entropy(x @ w.T, labels)

    def sampled_loss() -> torch.Tensor:
        logits = x @ w.T
        drawn = torch.multinomial(logits.detach().softmax(-1), 1).squeeze(-1)
        return F.cross_entropy(logits, drawn)

    return w, loss, sampled_loss


def test_sophia_g_gauss_newton_bartlett_estimate_and_step_by_hand() -> None:
    w, loss, sampled_loss = _softmax_regression()
    lr, (b1, b2), rho, wd, batch = 0.01, (0.965, 0.99), 0.05, 0.1, 20
    opt = SophiaG([w], lr=lr, betas=(b1, b2), rho=rho, weight_decay=wd, hessian_interval=2)
    assert opt.hessian_step_due()  # before the first step
    torch.manual_seed(7)
    (g_hat,) = torch.autograd.grad(sampled_loss(), [w])
    torch.manual_seed(7)
    opt.update_hessian(loss, sampled_loss, batch_size=batch)
    h = (1 - b2) * batch * g_hat.detach() ** 2
    torch.testing.assert_close(opt.state[w]["hessian"], h, rtol=1e-12, atol=0)
    assert w.grad is None  # the estimate never touches .grad

    theta = w.detach().clone()
    loss().backward()
    g = w.grad.clone()
    opt.step()
    m = (1 - b1) * g
    expected = theta * (1 - lr * wd) - lr * torch.clamp(m / torch.clamp(rho * h, min=1e-12), -1, 1)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-15)
    assert not opt.hessian_step_due()  # one step taken, interval 2
    opt.step()
    assert opt.hessian_step_due()


def test_sophia_g_warns_without_sampled_labels_or_batch_size() -> None:
    w, loss, _ = _softmax_regression()
    opt = SophiaG([w])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.update_hessian(loss, None)
    messages = " ".join(str(c.message) for c in caught)
    assert "true labels" in messages and "batch_size" in messages
    (g,) = torch.autograd.grad(loss(), [w])  # empirical Fisher with B = 1
    torch.testing.assert_close(opt.state[w]["hessian"], (1 - 0.99) * g**2, rtol=1e-12, atol=0)


def test_sophia_h_recovers_a_diagonal_hessian_exactly_with_rademacher_probes() -> None:
    a = torch.tensor([2.0, 0.5, -1.0, 4.0], dtype=D)  # one negative curvature
    x = torch.ones(4, dtype=D, requires_grad=True)
    opt = SophiaH([x], lr=0.1, betas=(0.9, 0.5), rho=0.5, weight_decay=0.0, distribution="rademacher")
    opt.update_hessian(lambda: 0.5 * (a * x * x).sum())
    torch.testing.assert_close(opt.state[x]["hessian"], 0.5 * a)  # (1 - b2) u ⊙ (H u) = (1 - b2) diag(H)
    x.grad = a * x.detach()  # ∇f
    opt.step()
    m = 0.1 * a
    expected = 1 - 0.1 * torch.clamp(m / torch.clamp(0.5 * 0.5 * a, min=1e-12), -1, 1)
    torch.testing.assert_close(x.detach(), expected)  # the negative-curvature coordinate takes a full sign step
    assert x[2].item() == pytest.approx(1 + 0.1)

    y = torch.ones(4, dtype=D, requires_grad=True)
    clipped = SophiaH([y], betas=(0.9, 0.0), distribution="rademacher", hessian_clip=1.0)
    clipped.update_hessian(lambda: 0.5 * (a * y * y).sum())
    assert clipped.state[y]["hessian"].tolist() == [1.0, 0.5, -1.0, 1.0]


# --- AM-SGD and AM-AdamW -------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [True, False])
def test_am_sgd_two_steps_by_hand_with_one_beta_for_the_model(foreach: bool) -> None:
    lr, lam, beta_max = 0.1, 0.1, 0.9
    shapes = [(2, 3), (3,)]
    params = [_tensor(*s, seed=i) for i, s in enumerate(shapes)]
    expected = [p.clone() for p in params]
    opt = AMSGD(params, lr=lr, model_lambda=lam, beta_max=beta_max, foreach=foreach)
    (g1a, g1b), (g2a, g2b) = _grads(2, shapes)
    _apply(opt, params, [g1a, g1b])
    d = [g1a, g1b]  # first step: d = g
    expected = [e - lr * di for e, di in zip(expected, d)]
    _apply(opt, params, [g2a, g2b])
    g = [g2a, g2b]
    gg = sum((x * x).sum() for x in g)
    gd = sum((x * y).sum() for x, y in zip(g, d))
    dd = sum((y * y).sum() for y in d)
    diff = sum(((y - x) ** 2).sum() for x, y in zip(g, d))
    beta = float(torch.clamp((gg + 2 * lam * gd - lam * dd) / diff, 0, beta_max))  # the two-plane model's β (arXiv:2510.04988)
    d = [((beta + lam) * y + (1 - beta) * x) / (1 + lam) for x, y in zip(g, d)]
    expected = [e - lr * di for e, di in zip(expected, d)]
    assert opt.last_beta.item() == pytest.approx(beta, rel=1e-12)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-14)


def test_am_sgd_beta_is_zero_when_memory_equals_gradient() -> None:
    p = torch.zeros(3, dtype=D)
    opt = AMSGD([p], lr=0.1)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    _apply(opt, [p], [g])
    _apply(opt, [p], [g])  # d = g exactly: ‖d - g‖ = 0
    assert opt.last_beta.item() == 0.0
    torch.testing.assert_close(p, -0.2 * g)


def test_am_adamw_two_steps_by_hand() -> None:
    lr, (beta_max, b2), eps, wd, lam = 0.01, (0.89, 0.999), 1e-8, 0.1, 0.1
    p = _tensor(2, 3, seed=1)
    theta = p.clone()
    opt = AMAdamW([p], lr=lr, betas=(beta_max, b2), eps=eps, weight_decay=wd, model_lambda=lam)
    d, v, prod = torch.zeros_like(p), torch.zeros_like(p), 1.0
    for t, g in enumerate([_tensor(2, 3, seed=2), _tensor(2, 3, seed=3)], start=1):
        v = b2 * v + (1 - b2) * g * g
        P = (1 - beta_max * prod) * (torch.sqrt(v / (1 - b2**t)) + eps)
        a = lam * P
        u = d - g
        if t == 1:
            beta = beta_max
        else:
            metric = 1 / (P * (1 + a))
            gap = (g * (d / P + wd * theta)).sum()  # constant lr: η_{t-1}/η_t = 1
            num = gap - (u * metric * (g + a * d)).sum()
            beta = float(torch.clamp(num / (u * u * metric).sum(), 0, beta_max))
        d = ((beta + a) * d + (1 - beta) * g) / (1 + a)  # (I + λP)⁻¹((1 - β) g + (λP + β) d)
        prod *= beta
        theta = theta * (1 - lr * wd) - lr * d / P
        _apply(opt, [p], [g])
        torch.testing.assert_close(p, theta, rtol=1e-12, atol=1e-14)
    assert opt.state[p]["beta_product"].item() == pytest.approx(prod, rel=1e-12)


def test_am_adamw_first_step_is_adams_when_lambda_is_zero() -> None:
    p = _tensor(5, seed=1)
    theta = p.clone()
    g = _tensor(5, seed=2)
    opt = AMAdamW([p], lr=0.01, weight_decay=0.0, model_lambda=0.0)
    _apply(opt, [p], [g])
    torch.testing.assert_close(p, theta - 0.01 * g / (g.abs() + 1e-8), rtol=1e-12, atol=1e-14)


# --- CLASSP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("power", [1.0, 2.0, 1.5])
def test_classp_follows_the_paper_rule(power: float, foreach: bool) -> None:
    lr, threshold, eps = 0.1, 0.3, 1e-5
    p = _tensor(8, seed=1)
    theta = p.clone()
    acc = torch.zeros_like(p)
    opt = CLASSP([p], lr=lr, threshold=threshold, eps=eps, power=power, foreach=foreach)
    for (g,) in _grads(3, [(8,)]):
        step = lr * g / (eps + acc) ** (1 / power)  # Σ over k < t: the current gradient is not in it yet
        theta = theta - torch.where(g * g > threshold, step, torch.zeros_like(g))
        acc = acc + g.abs() ** power  # every step accumulates, updated or not
        _apply(opt, [p], [g])
        torch.testing.assert_close(p, theta, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["grad_power_sum"], acc, rtol=1e-12, atol=1e-12)


def test_classp_options() -> None:
    g = torch.tensor([0.1, -2.0, 0.8], dtype=D)
    p = torch.zeros(3, dtype=D)
    _apply(CLASSP([p], lr=1.0, threshold=0.0, eps=1e-5, power=2.0, include_current=True), [p], [g])
    torch.testing.assert_close(p, -g / torch.sqrt(1e-5 + g * g))  # AdaGrad's first step
    q = torch.zeros(3, dtype=D)
    _apply(CLASSP([q], lr=0.5, threshold=0.5, apply_scaling=False), [q], [g])
    torch.testing.assert_close(q, torch.tensor([0.0, 1.0, -0.4], dtype=D))  # thresholded SGD


# --- SCALE ---------------------------------------------------------------------------------------


class _LM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mlp = nn.Linear(4, 6)
        self.head = nn.Linear(6, 10, bias=False)


def test_scale_groups_follow_the_parameter_roles() -> None:
    model = _LM()
    opt = create_optimizer("scale", model, lr=0.01, adamw_lr=0.003)
    roles = {g["role"]: g for g in opt.param_groups}
    assert set(roles) == {"hidden", "embedding", "readout", "vector"}
    assert roles["readout"]["params"] == [model.head.weight]
    assert roles["vector"]["lr"] == 0.003 and roles["vector"]["weight_decay"] == 0.0


def test_scale_rules_by_hand() -> None:
    lr, beta, wd = 0.1, 0.9, 0.01
    hidden, embed, readout = _tensor(3, 4, seed=1), _tensor(10, 4, seed=2), _tensor(5, 4, seed=3)
    expected = [hidden.clone(), embed.clone(), readout.clone()]
    opt = SCALE([{"params": [hidden], "role": "hidden"}, {"params": [embed], "role": "embedding"},
                 {"params": [readout], "role": "readout"}], lr=lr, momentum=beta, weight_decay=wd)
    mom = torch.zeros_like(readout)
    for grads in _grads(2, [(3, 4), (10, 4), (5, 4)]):
        for p, g in zip((hidden, embed, readout), grads):
            p.grad = g.clone()
        opt.step()
        gh, ge, gr = grads
        mom = beta * mom + (1 - beta) * gr
        updates = [gh / gh.square().mean(1, keepdim=True).sqrt(),  # each output row to unit RMS
                   ge / ge.square().mean(0, keepdim=True).sqrt(),  # each embedding column over the vocabulary
                   mom / mom.square().mean(1, keepdim=True).sqrt()]
        expected = [e * (1 - lr * wd) - lr * u for e, u in zip(expected, updates)]
        for p, e in zip((hidden, embed, readout), expected):
            torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-14)
    assert "momentum_buffer" not in opt.state[hidden] and "momentum_buffer" not in opt.state[embed]


def test_scale_refuses_vectors_in_matrix_roles() -> None:
    with pytest.raises(ValueError, match="ndim >= 2"):
        SCALE([{"params": [torch.zeros(3, requires_grad=True)], "role": "hidden"}])


# --- AdamP projection ----------------------------------------------------------------------------


def test_adamp_projection_removes_the_radial_part_on_scale_invariant_weights() -> None:
    w = _tensor(4, 6, seed=1)
    g = _tensor(4, 6, seed=2)
    g -= w * (w * g).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)  # orthogonal to each row
    update = _tensor(4, 6, seed=3)
    projected, ratio = project_scale_invariant(w, g, update, delta=0.1, wd_ratio=0.1, eps=1e-16)
    assert ratio == 0.1
    torch.testing.assert_close((projected * w).sum(1), torch.zeros(4, dtype=D), rtol=0, atol=1e-12)
    unchanged, ratio = project_scale_invariant(w, update, update, delta=0.1, wd_ratio=0.1, eps=1e-8)
    assert ratio == 1.0 and unchanged is update  # a generic gradient: no projection
    bias = _tensor(4, seed=4)
    assert project_scale_invariant(bias, bias, bias, 0.1, 0.1, 1e-8) == (bias, 1.0)


def test_adamp_layer_view_catches_whole_layer_invariance() -> None:
    """Orthogonal for the whole layer but not per row: the second (layer) view projects."""
    w = _tensor(3, 5, seed=1)
    g = _tensor(3, 5, seed=2)
    g -= w * (w * g).sum() / (w * w).sum()
    projected, ratio = project_scale_invariant(w, g, g.clone(), delta=0.1, wd_ratio=0.2, eps=1e-16)
    assert ratio == 0.2
    assert abs((projected * w).sum().item()) < 1e-12


# --- Schedule-Free: the eval point is the weighted average of the z's ----------------------------


def test_schedule_free_eval_point_is_the_running_average() -> None:
    lr, (b1, b2), eps = 0.05, (0.9, 0.999), 1e-8
    p = _tensor(4, seed=1)
    opt = ScheduleFreeAdamW([p], lr=lr, betas=(b1, b2), eps=eps, warmup_steps=3)
    z, x, v, weight_sum, lr_max = p.clone(), p.clone(), torch.zeros(4, dtype=D), 0.0, 0.0
    for k, (g,) in enumerate(_grads(6, [(4,)])):
        lr_k = lr * min(1.0, (k + 1) / 3)
        lr_max = max(lr_max, lr_k)
        weight = lr_max**2
        weight_sum += weight
        c = weight / weight_sum
        v = b2 * v + (1 - b2) * g * g
        z = z - lr_k * g / (torch.sqrt(v / (1 - b2 ** (k + 1))) + eps)
        x = (1 - c) * x + c * z  # the average, kept explicitly here
        _apply(opt, [p], [g])
        torch.testing.assert_close(p, (1 - b1) * z + b1 * x, rtol=1e-12, atol=1e-12)  # y in train mode
    opt.eval()
    torch.testing.assert_close(p, x, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="train"):
        opt.step()
    opt.train()
    torch.testing.assert_close(p, (1 - b1) * z + b1 * x, rtol=1e-12, atol=1e-12)
