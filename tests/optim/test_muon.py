"""Muon: parity with torch.optim.Muon, conv weights, options, the AdamW rule, state size."""

import copy

import pytest
import torch
from torch import nn

from optarena.optim import Muon, create_optimizer
from optarena.optim.muon import muon_scale
from optarena.optim.orthogonalize import polar_factor

SCALES = [("original", None), ("match_rms_adamw", "match_rms_adamw")]


def _pair(dtype, shapes=((16, 24), (24, 16), (16, 24), (8, 8))):
    ours = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    return ours, theirs


def _run(ours, theirs, opt_a, opt_b, steps=4):
    for _ in range(steps):
        for p, q in zip(ours, theirs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("scale,adjust", SCALES)
@pytest.mark.parametrize("nesterov", [True, False])
def test_bf16_newton_schulz_matches_torch_to_bf16_rounding(scale, adjust, nesterov):
    """Ours computes a X + B X as (B + a I) X (one plain GEMM), torch as addmm(X, B, X, beta=a):
    in bf16 that rounds differently, by ~2^-8 per iteration. Measured after 4 steps: the
    displacements differ by 1.4-3.3% (relative norm); the momentum buffers are identical."""
    ours, theirs = _pair(torch.float32)
    start = [p.detach().clone() for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.1, nesterov=nesterov, scale=scale, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust)
    _run(ours, theirs, a, b)
    for p, q, p0 in zip(ours, theirs, start):
        moved = (q - p0).detach()
        assert float((p - q).detach().norm() / moved.norm()) < 0.06
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale,adjust", SCALES)
def test_parity_with_torch_muon_in_full_precision(monkeypatch, dtype, scale, adjust):
    """torch.optim.Muon always runs Newton–Schulz in bf16; for this comparison its cast to bf16
    becomes a no-op, so torch's own code path runs in float32/float64 like ours."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *args, **kwargs: self.clone())
    ours, theirs = _pair(dtype)
    a = Muon(ours, lr=0.02, weight_decay=0.05, scale=scale, ns_dtype=dtype)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.05, adjust_lr_fn=adjust)
    _run(ours, theirs, a, b)
    for p, q in zip(ours, theirs):
        assert p.dtype == dtype
        # measured: bit-identical on this build; the tolerance allows another BLAS to round differently
        assert torch.allclose(p, q, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-13)


def test_conv_weights_are_flattened_and_restored():
    conv = torch.randn(6, 3, 3, 3, requires_grad=True)
    flat = conv.detach().reshape(6, -1).clone().requires_grad_()
    a, b = Muon([conv], lr=0.05), Muon([flat], lr=0.05)
    for _ in range(3):
        g = torch.randn(6, 3, 3, 3)
        conv.grad, flat.grad = g.clone(), g.reshape(6, -1).clone()
        a.step()
        b.step()
    assert conv.shape == (6, 3, 3, 3)
    assert torch.equal(conv.detach().reshape(6, -1), flat.detach())
    assert a.state[conv]["momentum_buffer"].shape == conv.shape


def test_exact_orthogonalization_is_the_polar_factor_of_the_momentum():
    W = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    W0 = W.detach().clone()
    G = torch.randn(10, 6, dtype=torch.float64)
    W.grad = G.clone()
    Muon([W], lr=0.1, momentum=0.9, nesterov=False, exact_orthogonalization=True).step()
    expected = W0 - 0.1 * muon_scale(W.shape, "original") * polar_factor(0.1 * G)
    assert torch.allclose(W.detach(), expected, atol=1e-12)


@pytest.mark.parametrize("option", [dict(foreach=False), dict(ns_method="gram"), dict(ns_method="auto")])
def test_options_give_the_same_trajectory(option):
    base, other = _pair(torch.float64, shapes=((8, 32), (8, 32), (32, 8), (12, 12)))
    _run(base, other, Muon(base, weight_decay=0.1), Muon(other, weight_decay=0.1, **option))
    for p, q in zip(base, other):
        assert torch.allclose(p, q, atol=1e-11)


def test_scales():
    assert muon_scale((64, 16), "original") == 2.0 and muon_scale((16, 64), "original") == 1.0
    assert muon_scale((16, 64), "match_rms_adamw") == pytest.approx(0.2 * 8)
    assert muon_scale((16, 64), "spectral") == 0.5 and muon_scale((64, 16, 1, 1), "spectral") == 2.0
    assert muon_scale((16, 64), "none") == 1.0


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 11, bias=False)

    def forward(self, idx):
        return self.head(self.fc2(torch.relu(self.fc1(self.embed(idx)))))


def test_create_optimizer_splits_a_model_and_the_adamw_rule_matches_torch():
    net = _Net()
    twin = copy.deepcopy(net)
    opt = create_optimizer("muon", net, adamw_lr=1e-2, adamw_weight_decay=0.1)
    groups = {tuple(g["names"]): g for g in opt.param_groups}
    assert groups[("fc1.weight", "fc2.weight")]["matrix"]
    tables = groups[("embed.weight", "head.weight")]
    vectors = groups[("fc1.bias", "fc2.bias")]
    assert not tables["matrix"] and tables["weight_decay"] == 0.1 and vectors["weight_decay"] == 0.0
    reference = torch.optim.AdamW(
        [{"params": [twin.embed.weight, twin.head.weight], "weight_decay": 0.1},
         {"params": [twin.fc1.bias, twin.fc2.bias], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.95), eps=1e-10,
    )
    x = torch.randint(0, 11, (4, 5))
    for _ in range(3):
        for model, o in ((net, opt), (twin, reference)):
            o.zero_grad()
            model(x).logsumexp(-1).mean().backward()
        opt.step()
        reference.step()
        twin.fc1.weight.data.copy_(net.fc1.weight)  # keep the Muon-updated matrices in sync
        twin.fc2.weight.data.copy_(net.fc2.weight)
    for name in ("embed.weight", "head.weight", "fc1.bias", "fc2.bias"):
        assert torch.allclose(net.get_parameter(name), twin.get_parameter(name), atol=1e-6), name


def test_state_is_one_buffer_per_hidden_matrix():
    net = _Net()
    opt = create_optimizer("muon", net)
    net(torch.randint(0, 11, (2, 3))).sum().backward()
    opt.step()
    for p in (net.fc1.weight, net.fc2.weight):
        assert list(opt.state[p]) == ["momentum_buffer"]
        assert opt.state[p]["momentum_buffer"].numel() * 4 == p.numel() * 4  # 4 bytes/param in float32


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "lr=-1.0"), (dict(momentum=1.0), "momentum=1.0"), (dict(ns_steps=101), "ns_steps=101"),
    (dict(scale="bad"), "scale='bad'"), (dict(ns_method="qr"), "ns_method='qr'"),
    (dict(adamw_betas=(0.9, 1.5)), "adamw_betas"), (dict(weight_decay=-0.1), "weight_decay=-0.1"),
    (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients"),
])
def test_invalid_hyperparameters_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        Muon([torch.randn(3, 3, requires_grad=True)], **kwargs)


def test_vectors_in_matrix_groups_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="matrix=False"):
        Muon([torch.randn(3, requires_grad=True)])


def test_grad_is_not_modified_and_params_without_grad_are_untouched():
    W, V = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    W.grad = torch.randn(6, 4)
    g, v0 = W.grad.clone(), V.detach().clone()
    Muon([W, V], nesterov=True).step()
    assert torch.equal(W.grad, g) and torch.equal(V, v0)
