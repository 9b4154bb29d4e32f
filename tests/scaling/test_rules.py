"""Step Law, the Power scheduler's lr rule, the weight-decay width rule, the h = A N^B D^C + E fit, `suggest`."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from optarena.cli import app
from optarena.scaling.rules import (
    HyperparameterFit,
    fit_hyperparameter_scaling,
    mup_lr_for_width,
    power_scheduler_lr,
    step_law_batch_size,
    step_law_lr,
    suggest,
    weight_decay_for_width,
)

# Two (N, D) pairs with the Step Law values computed by hand from 1.79 N^-0.713 D^0.307 and 0.58 D^0.571.
PAIRS = [
    (1e8, 2e9, 1.79 * 1e8 ** -0.713 * 2e9 ** 0.307, 0.58 * 2e9 ** 0.571),
    (1.2e9, 2.4e10, 1.79 * 1.2e9 ** -0.713 * 2.4e10 ** 0.307, 0.58 * 2.4e10 ** 0.571),
]


@pytest.mark.parametrize("n, d, lr, batch", PAIRS)
def test_step_law_against_the_formulas(n, d, lr, batch):
    assert step_law_lr(n, d) == pytest.approx(lr, rel=1e-12)
    assert step_law_batch_size(d) == pytest.approx(batch, rel=1e-12)


def test_step_law_reference_numbers():
    # Independent check of the exponent arithmetic: N = 1e8, D = 2e9 -> lr 2.537e-3, batch 118,663 tokens.
    assert step_law_lr(1e8, 2e9) == pytest.approx(2.5367e-3, rel=1e-4)
    assert step_law_batch_size(2e9) == pytest.approx(118_663, rel=1e-4)


def test_power_scheduler_lr_and_cap():
    assert power_scheduler_lr(1e12, 1024) == pytest.approx(1024 * 4.0 * 1e12 ** -0.51)
    assert power_scheduler_lr(1e6, 1024) == 0.02  # early on the power law exceeds max_lr
    assert power_scheduler_lr(1e10, 256, a=4.6, b=-0.5, max_lr=1.0) == pytest.approx(256 * 4.6 * 1e-5)


def test_weight_decay_width_rule_and_mup_lr():
    assert weight_decay_for_width(0.1, 256, 1024) == pytest.approx(0.2)  # sqrt(4)
    assert weight_decay_for_width(0.1, 256, 1024, exponent=1.0) == pytest.approx(0.4)  # mup: lr * wd fixed
    assert weight_decay_for_width(0.1, 256, 1024, exponent=0.0) == pytest.approx(0.1)
    assert mup_lr_for_width(1e-2, 256, 1024) == pytest.approx(2.5e-3)


@pytest.mark.parametrize("call, message", [
    (lambda: step_law_lr(-5, 1e9), r"n_params must be a finite number > 0, got n_params=-5"),
    (lambda: step_law_lr(1e8, 0), r"n_tokens must be a finite number > 0, got n_tokens=0"),
    (lambda: step_law_batch_size(float("nan")), r"n_tokens=nan"),
    (lambda: power_scheduler_lr(1e9, 0), r"batch_size=0"),
    (lambda: weight_decay_for_width(-0.1, 64, 256), r"base_weight_decay=-0.1"),
    (lambda: weight_decay_for_width(0.1, 0, 256), r"base_width=0"),
    (lambda: suggest(1e8, 1e9, base_width=64), r"both base_width and width"),
])
def test_bad_inputs_name_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fit_recovers_a_known_law():
    truth = dict(A=1.79, B=-0.713, C=0.307, E=2e-4)
    points = [(n, d, truth["A"] * n ** truth["B"] * d ** truth["C"] + truth["E"])
              for n in (1e7, 3e7, 1e8, 3e8) for d in (1e9, 4e9, 1.6e10)]
    fit = fit_hyperparameter_scaling(points, "lr")
    assert (fit.B, fit.C) == pytest.approx((truth["B"], truth["C"]), abs=2e-3)
    assert fit.E == pytest.approx(truth["E"], rel=0.05) and fit.r2 > 0.9999
    held_out = truth["A"] * 1e9 ** truth["B"] * 2e10 ** truth["C"] + truth["E"]
    assert fit.predict(1e9, 2e10) == pytest.approx(held_out, rel=0.01)
    assert HyperparameterFit.from_dict(fit.to_dict()) == fit


def test_fit_rejects_too_few_or_bad_points():
    with pytest.raises(ValueError, match="at least 4"):
        fit_hyperparameter_scaling([(1e7, 1e9, 1e-3)] * 3)
    with pytest.raises(ValueError, match=r"N of point 1 must be a finite number > 0"):
        fit_hyperparameter_scaling([(1e7, 1e9, 1e-3), (-1, 1e9, 1e-3), (1e8, 1e9, 1e-3), (1e9, 1e9, 1e-3)])


def test_suggest_lists_every_rule_with_its_paper():
    rows = suggest(1e8, 2e9, seq_len=1024, batch_size=64, base_width=256, width=1024, base_lr=1e-2)
    assert [r.paper.arxiv for r in rows] == ["2503.04715", "2408.13359", "2510.15262"]
    step, power, width = rows
    assert step.lr == pytest.approx(PAIRS[0][2]) and step.batch_sequences == pytest.approx(PAIRS[0][3] / 1024)
    assert power.lr == pytest.approx(min(0.02, 64 * 4.0 * 2e9 ** -0.51)) and power.batch_sequences == 64
    assert width.weight_decay == pytest.approx(0.2) and width.lr == pytest.approx(2.5e-3)
    assert len(suggest(1e8, 2e9)) == 2  # the width rule needs widths


def test_suggest_cli_prints_the_numbers():
    result = CliRunner().invoke(app, ["suggest", "--params", "1e8", "--tokens", "2e9", "--seq-len", "1024",
                                      "--base-width", "256", "--width", "1024"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in ("Step Law", "0.00254", "118,663", "Power scheduler", "Weight-decay width rule", "0.2",
                 "arXiv:2503.04715", "arXiv:2510.15262"):
        assert text in result.output
    other = CliRunner().invoke(app, ["suggest", "--params", "1.2B", "--tokens", "24B"], env={"COLUMNS": "250"})
    assert f"{PAIRS[1][2]:.3g}" in other.output


@pytest.mark.parametrize("args, message", [
    (["--params", "-5", "--tokens", "1e9"], "--params must be a positive number such as 1.2e9 or 125M, got '-5'"),
    (["--params", "1e8", "--tokens", "0"], "--tokens must be a positive number such as 1.2e9 or 125M, got '0'"),
    (["--params", "lots", "--tokens", "1e9"], "got 'lots'"),
    (["--params", "1e8", "--tokens", "1e9", "--width", "512"], "--base-width and --width go together"),
])
def test_suggest_cli_bad_inputs(args, message):
    result = CliRunner().invoke(app, ["suggest", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and message in result.output


def test_suggest_cli_fits_a_csv(tmp_path):
    lines = ["params,tokens,lr"] + [f"{n},{d},{1.79 * n ** -0.713 * d ** 0.307}"
                                    for n in (1e7, 3e7, 1e8) for d in (1e9, 4e9)]
    (tmp_path / "optima.csv").write_text("\n".join(lines))
    result = CliRunner().invoke(app, ["suggest", "--params", "1e8", "--tokens", "2e9", "--fit",
                                      str(tmp_path / "optima.csv")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Our fit" in result.output and "arXiv:2509.02046" in result.output
    missing = CliRunner().invoke(app, ["suggest", "--params", "1e8", "--tokens", "2e9", "--fit",
                                       str(tmp_path / "nope.csv")], env={"COLUMNS": "250"})
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_power_lr_is_monotone_in_tokens():
    values = [power_scheduler_lr(10 ** k, 512) for k in range(6, 13)]
    assert all(a >= b for a, b in zip(values, values[1:])) and math.isclose(values[0], 0.02)
