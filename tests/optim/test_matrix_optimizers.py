"""AuON, NAMO, Drop-Muon, muon_spectral, FISMO, MKOR and FRUGAL against hand-computed updates
from their papers' equations, plus exact continuation and a short training run for each."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from optarena.optim import create_optimizer
from optarena.optim.auon import AuON, HybridAuON
from optarena.optim.drop_muon import DropMuon, layer_key
from optarena.optim.fismo import FISMO
from optarena.optim.frugal import FRUGAL
from optarena.optim.mkor import MKOR, sherman_morrison
from optarena.optim.muon_spectral import MuonSpectral
from optarena.optim.namo import NAMO, NAMOD
from optarena.optim.orthogonalize import MUON_COEFFICIENTS, newton_schulz, polar_factor, singular_value_band

FAMILY = ["auon", "hybrid_auon", "namo", "namo_d", "drop_muon", "muon_spectral", "fismo", "mkor", "mkor_h", "frugal"]
F64 = torch.float64


def _param(*shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def _steps(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


# ---------------------------------------------------------------- AuON
def test_auon_paper_version_by_hand():
    W = _param(6, 4)
    W0 = W.detach().clone()
    G1, G2 = torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64)
    _steps(AuON([W], lr=0.3, momentum=0.9), [W], [[G1], [G2]])
    M, X = torch.zeros_like(W0), W0.clone()
    for G in (G1, G2):
        M = 0.9 * M + 0.1 * G
        U = 0.1 * G + 0.9 * M
        N = U / (U.norm() + 1e-7)
        r = torch.cosh(N).square().mean().sqrt()
        X = X - 0.3 * math.sqrt(6 / 4) * N / (r + 1e-8)
    assert torch.allclose(W.detach(), X, atol=1e-13)


def test_auon_package_version_by_hand():
    W = _param(4, 7)
    W0 = W.detach().clone()
    G = torch.randn(4, 7, dtype=F64)
    _steps(AuON([W], lr=0.08, gamma=1.5, normalize=False, scale="none", weight_decay=0.01), [W], [[G]])
    U = 0.05 * G + 0.95 * (0.05 * G)
    r = torch.cosh(1.5 * U / (U.norm() + 1e-7)).square().mean().sqrt()
    assert torch.allclose(W.detach(), W0 * (1 - 0.08 * 0.01) - 0.08 * U / (r + 1e-8), atol=1e-13)


def test_hybrid_auon_is_one_newton_schulz_step_then_the_brake():
    W = _param(5, 8)
    W0 = W.detach().clone()
    G = torch.randn(5, 8, dtype=F64)
    _steps(HybridAuON([W], lr=0.05, nesterov=False), [W], [[G]])
    X = (0.05 * G) / (0.05 * G).norm()
    a, b, c = MUON_COEFFICIENTS
    A = X @ X.T
    O = a * X + (b * A + c * A @ A) @ X
    r = torch.cosh(O).square().mean().sqrt()
    assert torch.allclose(W.detach(), W0 - 0.05 * O / (r + 1e-8), atol=1e-13)


def test_auon_brake_is_almost_the_identity():
    """AuON (arXiv:2509.24320): for a unit-norm N x N matrix, r ~ 1 + 1/(2 N^2)."""
    from optarena.optim.auon import cosh_rms
    X = torch.randn(64, 64, dtype=F64)
    X /= X.norm()
    assert abs(float(cosh_rms(X)) - (1 + 1 / (2 * 64 * 64))) < 1e-6


# ---------------------------------------------------------------- NAMO
def _namo_by_hand(W0, grads, lr, wd, mu1, mu2, eps, columnwise, clamp=0.0):
    W, M, v = W0.clone(), torch.zeros_like(W0), torch.zeros(W0.shape[1] if columnwise else (), dtype=F64)
    m, n = W0.shape
    for t, G in enumerate(grads, start=1):
        v = mu2 * v + (1 - mu2) * (G.norm(dim=0) ** 2 if columnwise else G.norm() ** 2)
        M = mu1 * M + (1 - mu1) * G
        U = (1 - mu1) * G + mu1 * M
        O = polar_factor(U)
        base = lr * math.sqrt(1 - mu2**t) / (1 - mu1**t + 1e-12)
        shape = 0.2 * math.sqrt(max(m, n))
        if columnwise:
            s = U.norm(dim=0) / (v.sqrt() + eps)
            if clamp:
                s = s.clamp(min=s.mean() * clamp, max=s.mean() / clamp)
            W = W * (1 - wd * (s * base).clamp(max=1)).clamp(min=0)
            W = W - O * (s * base * shape).clamp(max=1)
        else:
            alpha = base * U.norm() / (v.sqrt() + eps)
            W = W * (1 - wd * min(alpha, 1.0))
            W = W - min(alpha * shape, 1.0) * O
    return W


def test_namo_by_hand():
    W = _param(6, 9)
    W0 = W.detach().clone()
    grads = [torch.randn(6, 9, dtype=F64) for _ in range(3)]
    _steps(NAMO([W], lr=0.02, weight_decay=0.1, exact_orthogonalization=True), [W], [[g] for g in grads])
    expected = _namo_by_hand(W0, grads, 0.02, 0.1, 0.95, 0.99, 1e-8, columnwise=False)
    assert torch.allclose(W.detach(), expected, atol=1e-12)


@pytest.mark.parametrize("clamp", [0.0, 0.75])
def test_namo_d_by_hand(clamp):
    W = _param(7, 5)
    W0 = W.detach().clone()
    grads = [torch.randn(7, 5, dtype=F64) * torch.tensor([1.0, 10.0, 0.1, 1.0, 3.0], dtype=F64) for _ in range(3)]
    opt = NAMOD([W], lr=0.02, weight_decay=0.1, col_clamp=clamp, exact_orthogonalization=True)
    _steps(opt, [W], [[g] for g in grads])
    expected = _namo_by_hand(W0, grads, 0.02, 0.1, 0.95, 0.99, 1e-8, columnwise=True, clamp=clamp)
    assert torch.allclose(W.detach(), expected, atol=1e-12)
    assert opt.state[W]["v"].shape == (5,) and opt.state[W]["v"].dtype == torch.float32


def test_namo_d_rejects_bad_clamp():
    with pytest.raises(ValueError, match="col_clamp=1.5"):
        NAMOD([_param(3, 3)], col_clamp=1.5)


# ---------------------------------------------------------------- Drop-Muon
class _Stack(nn.Module):
    """Input embedding, four hidden layers with norms, a readout: layers 0..3 for Drop-Muon."""

    def __init__(self, width=8, vocab=13):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for _ in range(4))
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.embed(idx)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


def _loss(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 13, (4, 6), generator=g)
    return nn.functional.cross_entropy(model(x).flatten(0, 1), torch.roll(x, 1, 1).flatten())


def test_layer_key():
    assert layer_key("blocks.3.attn.q.weight") == "blocks.3"
    assert layer_key("conv1.weight") == "conv1" and layer_key("w") == "w"


def test_drop_muon_groups_follow_layers():
    model = _Stack()
    opt = create_optimizer("drop_muon", model)
    layers = {tuple(g["names"]): g["layer"] for g in opt.param_groups}
    assert layers[("layers.2.1.weight",)] == 2
    assert layers[("layers.2.0.weight", "layers.2.0.bias", "layers.2.1.bias")] == 2
    assert layers[("embed.weight", "head.weight")] is None and layers[("head.bias",)] is None
    assert opt.num_layers == 4


def test_drop_muon_frozen_layers_are_bit_identical_and_skip_their_gradients():
    torch.manual_seed(1)
    model = _Stack()
    opt = create_optimizer("drop_muon", model, seed=3)
    for step in range(2):  # give every layer momentum first (start index forced to 0)
        opt._start_probs = torch.tensor([1.0, 0, 0, 0], dtype=F64)
        opt.prepare_step()
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
    opt._start_probs = torch.tensor([0, 0, 1.0, 0], dtype=F64)
    start = opt.prepare_step()
    assert start == 2
    frozen = [p for i in (0, 1) for p in model.layers[i].parameters()]
    active = [p for i in (2, 3) for p in model.layers[i].parameters()]
    assert all(not p.requires_grad for p in frozen) and all(p.requires_grad for p in active)
    before = {id(p): (p.detach().clone(), copy.deepcopy(opt.state[p])) for p in frozen + active}
    opt.zero_grad()
    _loss(model, 5).backward()
    assert all(p.grad is None for p in frozen)  # autograd skipped their weight gradients
    opt.step()
    assert all(p.requires_grad for p in frozen)  # restored after the step
    for p in frozen:
        value, state = before[id(p)]
        assert torch.equal(p.detach(), value)
        assert state.keys() == opt.state[p].keys()
        assert all(torch.equal(state[k], opt.state[p][k]) for k in state)
    assert all(not torch.equal(p.detach(), before[id(p)][0]) for p in active)
    assert not torch.equal(model.embed.weight.detach(), model.embed.weight.detach() * 0)  # still trained


def test_drop_muon_without_prepare_step_still_updates_only_a_suffix():
    params = [_param(4, 4) for _ in range(3)]
    opt = DropMuon(params, start_probs=[0.0, 1.0, 0.0])
    before = [p.detach().clone() for p in params]
    _steps(opt, params, [[torch.randn(4, 4, dtype=F64) for _ in params]])
    assert torch.equal(params[0].detach(), before[0]) and "momentum_buffer" not in opt.state[params[0]]
    assert not torch.equal(params[1].detach(), before[1]) and not torch.equal(params[2].detach(), before[2])


def test_drop_muon_uniform_start_index_and_reproducible_draws():
    opt = DropMuon([_param(3, 3) for _ in range(4)], seed=7)
    draws = [opt.prepare_step() for _ in range(4000)]
    counts = [draws.count(i) for i in range(4)]
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts), counts
    saved = copy.deepcopy(opt.state_dict())
    following = [opt.prepare_step() for _ in range(20)]
    twin = DropMuon([_param(3, 3) for _ in range(4)], seed=0)
    twin.load_state_dict(saved)
    assert [twin.prepare_step() for _ in range(20)] == following
    with pytest.raises(ValueError, match="start_probs"):
        DropMuon([_param(3, 3) for _ in range(4)], start_probs=[0.5, 0.5])


# ---------------------------------------------------------------- muon_spectral
def test_muon_spectral_update_has_spectral_norm_lr_sqrt_out_over_in():
    W = _param(12, 3)
    W0 = W.detach().clone()
    opt = MuonSpectral([W], lr=0.01, weight_decay=0.0, exact_orthogonalization=True)
    _steps(opt, [W], [[torch.randn(12, 3, dtype=F64)]])
    step_norm = torch.linalg.matrix_norm(W.detach() - W0, ord=2)
    assert float(step_norm) == pytest.approx(0.01 * math.sqrt(12 / 3), rel=1e-10)
    assert opt.spectral_ratios()[0] == pytest.approx(float(torch.linalg.matrix_norm(W.detach(), ord=2)) / 2.0)


def test_muon_spectral_weight_decay_bounds_the_spectral_norm():
    """||W_t||_2 <= (1 - lr wd)^t ||W_0||_2 + sqrt(d_out/d_in)/wd: the muP spectral condition holds."""
    W = torch.zeros(16, 4, dtype=F64, requires_grad=True)
    opt = MuonSpectral([W], lr=0.05, weight_decay=1.0)
    G = torch.randn(16, 4, dtype=F64)
    _steps(opt, [W], [[G + 0.1 * torch.randn(16, 4, dtype=F64)] for _ in range(200)])
    ratio = opt.spectral_ratios()[0]
    # Theta(1), below the bound max||O||_2 / wd, where NS5 promises ||O||_2 <= ~1.2 (not exactly 1)
    assert 0.5 < ratio <= singular_value_band()[1] + 1e-6


# ---------------------------------------------------------------- FISMO
def _inv_sqrt(A):
    e, V = torch.linalg.eigh(A)
    return V @ torch.diag(e.rsqrt()) @ V.T


def test_fismo_by_hand():
    m, n = 5, 7
    W = _param(m, n)
    W0 = W.detach().clone()
    grads = [torch.randn(m, n, dtype=F64) for _ in range(3)]
    gamma, mu, beta, lr = 0.9, 1e-2, 0.8, 0.03
    opt = FISMO([W], lr=lr, momentum=beta, factor_decay=gamma, damping=mu, precondition_frequency=1)
    _steps(opt, [W], [[g] for g in grads])
    P, Q, M, X = torch.eye(m, dtype=F64), torch.eye(n, dtype=F64), torch.zeros(m, n, dtype=F64), W0.clone()
    for G in grads:
        L = G @ torch.linalg.inv(Q) @ G.T / n + mu * torch.trace(P) / m * torch.eye(m, dtype=F64)
        Pt = gamma * P + (1 - gamma) * L
        P = m * Pt / torch.trace(Pt)
        P = (P + P.T) / 2
        R = G.T @ torch.linalg.inv(P) @ G / m + mu * torch.trace(Q) / n * torch.eye(n, dtype=F64)
        Qt = gamma * Q + (1 - gamma) * R
        Q = n * Qt / torch.trace(Qt)
        Q = (Q + Q.T) / 2
        M = beta * M + (1 - beta) * _inv_sqrt(P) @ G @ _inv_sqrt(Q)
        X = X - lr * _inv_sqrt(P) @ newton_schulz(M) @ _inv_sqrt(Q)  # aspect scale is 1 for m < n
    assert torch.allclose(W.detach(), X, atol=1e-10)
    assert torch.allclose(opt.state[W]["P"], P, atol=1e-12) and torch.allclose(opt.state[W]["Q"], Q, atol=1e-12)


def test_fismo_refreshes_factors_every_k_steps_and_skips_long_sides():
    W = _param(4, 30)
    opt = FISMO([W], precondition_frequency=3, max_precondition_dim=10)
    assert "Q" not in opt.state[W]
    seen = []
    for _ in range(4):
        _steps(opt, [W], [[torch.randn(4, 30, dtype=F64)]])
        seen.append(opt.state[W]["P"].clone())
    assert "Q" not in opt.state[W]
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2]) and not torch.equal(seen[2], seen[3])


# ---------------------------------------------------------------- MKOR
def test_sherman_morrison():
    A = torch.randn(5, 5, dtype=F64)
    A = A @ A.T + torch.eye(5, dtype=F64)
    v = torch.randn(5, dtype=F64)
    assert torch.allclose(sherman_morrison(torch.linalg.inv(A), v), torch.linalg.inv(A + torch.outer(v, v)))


def test_mkor_by_hand():
    torch.manual_seed(3)
    layer = nn.Linear(4, 3, bias=False).double()
    W0 = layer.weight.detach().clone()
    xs = [torch.randn(5, 4, dtype=F64) for _ in range(3)]
    targets = [torch.randn(5, 3, dtype=F64) for _ in range(3)]
    opt = MKOR(layer.parameters(), lr=0.1, momentum=0.0, inv_freq=1, model=layer, reset_threshold=1.5)
    for x, y in zip(xs, targets):
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        opt.step()
    W, factors, reset = W0.clone(), {}, {"A": False, "G": False}
    resets_seen = 0

    def update(side, v):
        nonlocal resets_seen
        eye = torch.eye(v.numel(), dtype=F64)
        if side not in factors:
            factors[side] = eye
        elif reset[side]:
            factors[side], reset[side] = 0.9 * factors[side] + 0.1 * eye, False
            resets_seen += 1
        else:
            factors[side] = sherman_morrison(0.95 * factors[side] + 0.05 * eye, v)
            if factors[side].abs().max() > 1.5:  # the norm-based stabiliser flags both sides
                reset["A"] = reset["G"] = True

    for x, y in zip(xs, targets):
        out = (x @ W.T).requires_grad_()
        ((out - y) ** 2).mean().backward()
        grad = out.grad.T @ x
        update("A", x.clamp(-100, 100).mean(0))
        update("G", (out.grad * 5).clamp(-100, 100).mean(0))  # 5 rows: undo the mean's 1/N
        direction = factors["G"] @ grad @ factors["A"]
        W = W - 0.1 * direction * grad.norm() / direction.norm()
    assert torch.allclose(layer.weight.detach(), W, atol=1e-12)


def test_mkor_without_a_model_warns_and_runs_its_base_optimizer():
    W = _param(3, 3)
    with pytest.warns(UserWarning, match="without a model"):
        opt = MKOR([W], lr=0.1, momentum=0.0)
    W0 = W.detach().clone()
    G = torch.randn(3, 3, dtype=F64)
    _steps(opt, [W], [[G]])
    assert torch.allclose(W.detach(), W0 - 0.1 * G)


def test_mkor_hooks_do_not_keep_a_discarded_optimizer_alive():
    import gc
    import weakref

    model = _Stack()
    ref = weakref.ref(create_optimizer("mkor", model))
    gc.collect()
    assert ref() is None
    _loss(model).backward()  # the left-over hooks are no-ops


def test_mkor_h_switches_to_first_order_when_the_loss_stops_falling():
    model = _Stack()
    opt = create_optimizer("mkor_h", model, switch_window=5, switch_threshold=0.05)
    assert any(m._forward_hooks for m in model.modules())
    losses = [3.0] * 5 + [2.0] * 5 + [1.95] * 5  # falls 33%, then 2.5% < 5%
    for step, value in enumerate(losses):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        opt.observe_loss(value)
        assert opt.switched == (step == 14)
    assert opt.switch_step == 15
    assert not any(m._forward_hooks for m in model.modules())
    assert all("A_inv" not in s for s in opt.state.values())


# ---------------------------------------------------------------- FRUGAL
def _adam_first_steps(grads, lr, betas=(0.9, 0.999), eps=1e-8):
    m = v = 0
    out = []
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        out.append(lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps))
    return out


def test_frugal_randperm_rows_by_hand():
    W = _param(4, 6)
    W0 = W.detach().clone()
    grads = [torch.randn(4, 6, dtype=F64) for _ in range(2)]
    opt = FRUGAL([W], lr=0.01, density=0.5, projection="randperm", update_gap=100, inactive_lr_scale=0.5)
    _steps(opt, [W], [[g] for g in grads])
    rows = opt.state[W]["projector"]
    assert rows.dtype == torch.int64 and rows.numel() == 2 and opt.state[W]["exp_avg"].shape == (2, 6)
    expected = W0.clone()
    for g, adam in zip(grads, _adam_first_steps([g[rows] for g in grads], 0.01)):
        expected[rows] -= adam
        free = g.clone()
        free[rows] = 0
        expected -= 0.005 * free.sign()
    assert torch.allclose(W.detach(), expected, atol=1e-14)


def test_frugal_svd_projection_by_hand():
    W = _param(3, 8)
    W0 = W.detach().clone()
    g1, g2 = torch.randn(3, 8, dtype=F64), torch.randn(3, 8, dtype=F64)
    opt = FRUGAL([W], lr=0.01, density=0.34, projection="svd", update_gap=100)
    _steps(opt, [W], [[g1], [g2]])
    P = torch.linalg.svd(g1, full_matrices=False)[0][:, :1]  # rank round(0.34 * 3) = 1, on the short side
    assert torch.allclose(opt.state[W]["projector"].abs(), P.abs(), atol=1e-12)
    P = opt.state[W]["projector"]
    expected = W0.clone()
    for g, adam in zip((g1, g2), _adam_first_steps([P.T @ g1, P.T @ g2], 0.01)):
        expected -= P @ adam + 0.01 * (g - P @ (P.T @ g)).sign()
    assert torch.allclose(W.detach(), expected, atol=1e-13)


def test_frugal_blockwise_by_hand_and_state_only_on_active_blocks():
    params = [_param(3, 5) for _ in range(4)]
    before = [p.detach().clone() for p in params]
    opt = FRUGAL(params, lr=0.01, density=0.5, projection="blockwise", update_gap=2, block_order="ascending")
    grads = [[torch.randn(3, 5, dtype=F64) for _ in params] for _ in range(3)]
    _steps(opt, params, grads[:2])
    for i, p in enumerate(params):
        if i in (0, 1):  # the first window activates matrices 0 and 1 (ascending order)
            expected = before[i] - sum(_adam_first_steps([grads[0][i], grads[1][i]], 0.01))
            assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        else:
            expected = before[i] - 0.01 * (grads[0][i].sign() + grads[1][i].sign())
            assert not opt.state[p]
        assert torch.allclose(params[i].detach(), expected, atol=1e-14)
    _steps(opt, params, grads[2:])  # the second window moves to matrices 2 and 3 and frees 0 and 1
    assert not opt.state[params[0]] and "exp_avg" in opt.state[params[2]]


def test_frugal_state_bytes_live_on_the_subspace():
    W = torch.randn(64, 256, requires_grad=True)
    opt = FRUGAL([W], density=0.25, projection="svd")
    W.grad = torch.randn(64, 256)
    opt.step()
    used = opt.state_bytes()
    rank = 16
    assert used["matrix_state"] == 4 * (2 * rank * 256 + 64 * rank)  # Adam moments on r x n + the m x r projector
    assert used["matrix_state"] / used["matrix_params"] == pytest.approx(2 * 0.25 + 0.25 * 64 / 256)
    assert used["other_state"] == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(density=0.0), "density=0.0"), (dict(projection="pca"), "projection='pca'"),
    (dict(update_gap=0), "update_gap=0"), (dict(inactive_update_rule="adam"), "inactive_update_rule='adam'"),
])
def test_frugal_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FRUGAL([_param(3, 3)], **kwargs)


# ---------------------------------------------------------------- the whole family
def _family_optimizer(name, model, **kwargs):
    extra = {"update_gap": 2} if name == "frugal" else {}
    extra.update({"inv_freq": 2} if name.startswith("mkor") else {})
    extra.update({"precondition_frequency": 2} if name == "fismo" else {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # built from a model, nothing should fall back
        return create_optimizer(name, model, **extra, **kwargs)


def _train(model, opt, steps, offset=0):
    for step in range(offset, offset + steps):
        if hasattr(opt, "prepare_step"):
            opt.prepare_step()
        opt.zero_grad()
        loss = _loss(model, step)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", FAMILY)
def test_state_dict_round_trip_continues_exactly(name, dtype):
    torch.manual_seed(0)
    model = _Stack().to(dtype)
    opt = _family_optimizer(name, model)
    _train(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, offset=3)
    twin = _Stack().to(dtype)
    twin.load_state_dict(saved_model)
    twin_opt = _family_optimizer(name, twin)
    twin_opt.load_state_dict(saved_opt)
    _train(twin, twin_opt, 3, offset=3)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.dtype == dtype
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", FAMILY)
def test_every_family_member_trains_the_lm_workload(name):
    """A short run on the ``lm`` workload (tiny width, short windows): the validation loss must fall.

    Measured (60 steps, batch 16 x 32 bytes, registry defaults): every member goes from ~5.5 to
    2.6-3.1 nats/byte; the assertion keeps a margin of > 1 nat.
    """
    from optarena.arena.workloads.lm import LMWorkload

    task = LMWorkload().build("tiny", seed=0, batch_size=16, seq_len=32, eval_windows=64)
    start = task.evaluate(task.model)["loss"]
    opt = create_optimizer(name, task.model)
    for step in range(60):
        if hasattr(opt, "prepare_step"):
            opt.prepare_step()
        opt.zero_grad()
        loss = task.loss(task.model, task.train_batch(step))
        loss.backward()
        opt.step()
        if hasattr(opt, "observe_loss"):
            opt.observe_loss(loss.detach())
    end = task.evaluate(task.model)["loss"]
    assert end < start - 1.5, (start, end)
