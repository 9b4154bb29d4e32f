"""LR sensitivity on hand-made sweeps, per-run stability stats, top singular values across widths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optarena.diagnostics import (
    UpdateNorm,
    grad_norm,
    lr_sensitivity,
    read_model_stats,
    summarize_stats,
    top_singular_value,
    top_singular_values,
    top_singular_values_across_widths,
    width_spread,
)


def test_lr_sensitivity_on_a_hand_made_sweep():
    # l0 = 5.5; best l* = 2.5; capped losses 3.0, 2.5, 2.6, 5.5 (diverged) -> (0.5 + 0 + 0.1 + 3.0) / 4
    sweep = {1e-3: 3.0, 3e-3: 2.5, 1e-2: 2.6, 3e-2: float("nan")}
    assert lr_sensitivity(sweep, 5.5) == pytest.approx(0.9)
    # a loss above the initial loss is capped at it, like divergence; pairs work as well as a dict
    assert lr_sensitivity([(1e-3, 3.0), (3e-3, 2.5), (1e-2, 2.6), (3e-2, 9.0)], 5.5) == pytest.approx(0.9)
    assert lr_sensitivity(sweep, 5.5, lr_range=(1e-3, 1e-2)) == pytest.approx(0.6 / 3)
    assert lr_sensitivity({1e-3: 2.0, 1e-2: 2.0}, 5.0) == 0.0  # flat: insensitive


def test_lr_sensitivity_orders_a_stable_and_an_unstable_sweep():
    lrs = [3e-4 * 10 ** (k / 2) for k in range(7)]  # log-spaced 3e-4 .. 3e-1, as Wortsman et al.
    stable = dict(zip(lrs, [3.2, 3.0, 2.9, 2.85, 2.9, 3.0, 3.3]))
    unstable = dict(zip(lrs, [3.2, 3.0, 2.9, 2.85, 4.5, math.inf, math.nan]))
    assert lr_sensitivity(unstable, 5.5) > lr_sensitivity(stable, 5.5)


@pytest.mark.parametrize("sweep, l0, kwargs, message", [
    ({}, 5.0, {}, "at least one"),
    ({0.0: 1.0}, 5.0, {}, "lr=0.0"),
    ({1e-3: 1.0}, float("nan"), {}, "initial_loss=nan"),
    ({1e-3: 1.0}, 5.0, {"lr_range": (1e-1, 1.0)}, "inside lr_range"),
    ({1e-3: 1.0}, 5.0, {"lr_range": (1.0, 0.1)}, "0 < low <= high"),
])
def test_lr_sensitivity_bad_inputs(sweep, l0, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_sensitivity(sweep, l0, **kwargs)


def test_top_singular_value_known_matrices():
    assert top_singular_value(torch.diag(torch.tensor([3.0, 2.0, 1.0]))) == pytest.approx(3.0)
    conv = torch.zeros(2, 1, 2, 2)
    conv[0, 0, 0, 0] = 5.0
    assert top_singular_value(conv) == pytest.approx(5.0)  # flattened to (2, 4)
    assert top_singular_value(torch.ones(4, 9, dtype=torch.float64)) == pytest.approx(6.0)  # sqrt(4 * 9)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        top_singular_value(torch.ones(3))


def test_top_singular_values_across_widths():
    def model(width: int, value: float) -> nn.Module:
        m = nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2))
        with torch.no_grad():
            m[0].weight.copy_(torch.eye(width, 4) * value)
            m[1].weight.fill_(1.0)
        return m

    assert set(top_singular_values(model(8, 1.0))) == {"0.weight", "1.weight"}
    rows = top_singular_values_across_widths({16: model(16, 3.0), 8: model(8, 1.5)})
    first = [r for r in rows if r["name"] == "0.weight"]
    assert [(r["width"], r["sigma_top"], r["ratio_to_base"]) for r in first] == [
        (8, pytest.approx(1.5), pytest.approx(1.0)), (16, pytest.approx(3.0), pytest.approx(2.0))]
    # the all-ones (2, w) readout has sigma = sqrt(2 w): sqrt(16) vs sqrt(32)
    spread = width_spread(rows)
    assert spread["0.weight"] == pytest.approx(2.0) and spread["1.weight"] == pytest.approx(math.sqrt(2))


def test_grad_and_update_norms_by_hand():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    q = nn.Parameter(torch.tensor([[2.0]]))
    p.grad, q.grad = torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])
    assert grad_norm([p, q]) == pytest.approx(5.0)
    assert grad_norm([nn.Parameter(torch.ones(2))]) == 0.0  # no gradient yet
    meter = UpdateNorm([p, q])
    meter.before()
    torch.optim.SGD([p, q], lr=0.1).step()  # delta = -0.1 * (3, 0, 4): norm 0.5; |theta| = 3
    out = meter.after()
    assert out["update_norm"] == pytest.approx(0.5) and out["relative_update_norm"] == pytest.approx(0.5 / 3)
    with pytest.raises(RuntimeError, match="before"):
        meter.after()


def test_read_model_stats_from_lm_and_summaries():
    from optarena.arena.workloads.lm import ByteTransformer, LMConfig

    model = ByteTransformer(LMConfig(n_layer=1, d_model=32, track_stats=True))
    model(torch.randint(0, 256, (2, 8)))
    stats = read_model_stats(model)
    assert set(stats) == {"max_attn_logit", "logit_rms"} and all(math.isfinite(v) for v in stats.values())
    assert read_model_stats(nn.Linear(2, 2)) == {}

    points = [{"max_attn_logit": 1.0, "grad_norm": 2.0}, {"max_attn_logit": 4.0, "grad_norm": float("nan")},
              {"max_attn_logit": 2.0, "grad_norm": 1.0}]
    summary = summarize_stats(points)
    assert summary["max_attn_logit"] == {"max": 4.0, "final": 2.0, "mean": pytest.approx(7 / 3), "count": 3.0}
    assert summary["grad_norm"]["max"] == 2.0 and summary["grad_norm"]["count"] == 2.0
    assert "logit_rms" not in summary  # never recorded

    class Point:  # objects with attributes, like the store's curve points
        grad_norm = 3.0

    assert summarize_stats([Point()], keys=("grad_norm", "update_norm")) == {
        "grad_norm": {"max": 3.0, "final": 3.0, "mean": 3.0, "count": 1.0}}
