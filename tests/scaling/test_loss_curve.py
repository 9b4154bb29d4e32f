"""LR-annealing scaling law: areas by hand, parameter recovery, held-out prediction, plot and command."""

from __future__ import annotations


import numpy as np
import pytest

from optarena.scaling.loss_curve import (
    AnnealingLawParams, annealing_areas, compare_curves, detect_warmup, fit_annealing_law, plot_predictions,
    predict_curve,
)
from optarena.schedules import make_schedule

STEPS, WARMUP = 1500, 30
TRUE = AnnealingLawParams(L0=2.0, A=3.0, alpha=0.45, C=4e-4)


def lrs(name: str, steps: int = STEPS, warmup: int = WARMUP, **options) -> np.ndarray:
    return np.array(make_schedule(name, steps, warmup, **options).values(steps))


def noisy(curve: np.ndarray, seed: int, level: float = 0.003) -> np.ndarray:
    return curve * (1.0 + level * np.random.default_rng(seed).standard_normal(curve.size))


@pytest.fixture(scope="module")
def fitted() -> AnnealingLawParams:
    names = ["constant", "cosine"]
    curves = [(lrs(name), noisy(predict_curve(TRUE, lrs(name)), seed)) for seed, name in enumerate(names)]
    return fit_annealing_law(curves)


def test_areas_by_hand():
    s1, s2 = annealing_areas([1.0, 1.0, 0.5, 0.5, 0.25], decay_factor=0.5)
    # drops 0, 0, .5, 0, .25 -> momentum 0, 0, .5, .25, .375
    assert s1 == pytest.approx([1.0, 2.0, 2.5, 3.0, 3.25])
    assert s2 == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.125])


def test_warmup_counts_at_peak():
    lr = [0.25, 0.5, 1.0, 1.0, 0.5]
    assert detect_warmup(lr) == 2
    s1, s2 = annealing_areas(lr, decay_factor=0.5)
    assert s1 == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.5])
    assert s2 == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.5])
    assert detect_warmup(lrs("cosine", warmup=0)) == 0
    assert detect_warmup(lrs("constant", warmup=0)) == 0
    assert detect_warmup(lrs("wsd", warmup=10)) == 9  # ramp (s+1)/10 reaches the peak at step 9


def test_fit_recovers_known_parameters(fitted):
    assert fitted.L0 == pytest.approx(TRUE.L0, rel=0.01)
    assert fitted.A == pytest.approx(TRUE.A, rel=0.05)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert fitted.C == pytest.approx(TRUE.C, rel=0.05)
    assert fitted.r2 > 0.99 and all(r2 > 0.99 for r2 in fitted.r2_per_curve)
    assert fitted.annealing_identified and fitted.n_points == 2 * (STEPS - (WARMUP - 1))
    assert "S1^-" in str(fitted)


@pytest.mark.parametrize("name, options", [
    ("wsd", {"decay_fraction": 0.2}),
    ("wsd", {"decay_fraction": 0.1, "shape": "1-sqrt"}),
    ("linear", {}),
    ("power", {"batch_size": 16, "seq_len": 64}),
])
def test_predicts_held_out_schedule_within_one_percent(fitted, name, options):
    lr = lrs(name, **options)
    truth = predict_curve(TRUE, lr)
    predicted = fitted.predict(lr)
    assert np.max(np.abs(predicted[WARMUP:] - truth[WARMUP:]) / truth[WARMUP:]) < 0.01
    errors = compare_curves(predicted, noisy(truth, seed=7))
    assert errors["final_rel_error"] < 0.01 and errors["mape"] < 0.01


def test_fit_on_sparse_evaluations_and_absolute_lrs():
    base = 3e-4  # absolute learning rates: same law, other units
    curves = []
    for seed, name in enumerate(["constant", "cosine"]):
        lr = base * lrs(name)
        loss = noisy(predict_curve(TRUE, lrs(name)), seed)
        sparse = np.full(STEPS, np.nan)
        sparse[49::50] = loss[49::50]  # evaluated every 50 steps
        curves.append((lr, sparse))
    fit = fit_annealing_law(curves)
    assert fit.n_points == 2 * (STEPS // 50)
    wsd = lrs("wsd", decay_fraction=0.2)
    truth = predict_curve(TRUE, wsd)
    assert np.max(np.abs(fit.predict(base * wsd)[WARMUP:] / truth[WARMUP:] - 1)) < 0.01
    assert fit.L0 == pytest.approx(TRUE.L0, rel=0.02)


def test_single_curves():
    cosine = lrs("cosine")
    one = fit_annealing_law([(cosine, noisy(predict_curve(TRUE, cosine), 3))])
    assert one.C == pytest.approx(TRUE.C, rel=0.1)
    constant = lrs("constant")
    flat = fit_annealing_law([(constant, noisy(predict_curve(TRUE, constant), 4))])
    assert flat.C == 0.0 and not flat.annealing_identified and flat.notes


def test_decay_factor_choice():
    law = AnnealingLawParams(L0=2.0, A=3.0, alpha=0.45, C=4e-3, decay_factor=0.99)
    curves = [(lrs(name), noisy(predict_curve(law, lrs(name)), seed, 0.001)) 
              for seed, name in enumerate(["constant", "wsd"])]
    fit = fit_annealing_law(curves, decay_factor=(0.999, 0.99, 0.9))
    assert fit.decay_factor == 0.99 and fit.C == pytest.approx(law.C, rel=0.05)


def test_fit_errors():
    with pytest.raises(ValueError, match="at least one"):
        fit_annealing_law([])
    with pytest.raises(ValueError, match="3 learning rates but 2 losses"):
        fit_annealing_law([([1.0, 1.0, 1.0], [2.0, 1.0])])
    with pytest.raises(ValueError, match="losses must be > 0"):
        fit_annealing_law([(np.ones(10), -np.ones(10))])
    with pytest.raises(ValueError, match="at least 4 fitted loss values"):
        fit_annealing_law([(np.ones(10), np.full(10, np.nan))])
    with pytest.raises(ValueError, match="decay_factor"):
        annealing_areas([1.0, 0.5], decay_factor=1.0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        fit_annealing_law([(np.ones(10), np.ones(10))], decay_factor=[])
    with pytest.raises(ValueError, match="finite values >= 0"):
        annealing_areas([1.0, -0.5])


def test_compare_curves_by_hand():
    errors = compare_curves(np.array([2.0, 1.1, 1.0]), np.array([np.nan, 1.0, 1.25]))
    assert errors["final_step"] == 3 and errors["final_rel_error"] == pytest.approx(0.2)
    assert errors["mape"] == pytest.approx((0.1 + 0.2) / 2)
    late = compare_curves(np.array([2.0, 1.1, 1.0]), np.array([np.nan, 1.0, 1.25]), start=2)
    assert late["mape"] == pytest.approx(0.2)


def test_plot_predictions(tmp_path):
    curve = predict_curve(TRUE, lrs("cosine"))
    observed = np.where(np.arange(STEPS) % 100 == 99, curve, np.nan)
    path = plot_predictions(tmp_path / "sub" / "p.png", {"cosine": (curve, observed), "wsd": (curve - 0.01, None)})
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"


def test_predict_command_on_a_store(tmp_path):
    typer_testing = pytest.importorskip("typer.testing")
    import typer

    from optarena.arena.store import CurvePoint, ResultStore, default_storage_url
    from optarena.commands.predict import curve_arrays, predict_command

    steps, warmup_fraction, base_lr = 400, 0.05, 0.003
    store = ResultStore(default_storage_url(tmp_path))
    run_ids = {}
    for key, (name, options) in enumerate([("constant", {}), ("cosine", {}), ("wsd", {"decay_fraction": 0.2})]):
        config = {"workload": "lm", "scale": "tiny", "optimizer": "adamw", "seed": 0, "steps": steps,
                  "hparams": {"lr": base_lr}, "schedule": name, "schedule_options": options,
                  "warmup_fraction": warmup_fraction}
        run_id = store.start_run(f"key{key}", config=config)
        multipliers = lrs(name, steps=steps, warmup=round(warmup_fraction * steps), **options)
        losses = noisy(predict_curve(TRUE, multipliers), key, level=0.001)
        points = [CurvePoint(0, 0, None, 4.0, base_lr * multipliers[0], None, 0.0)]
        for step in range(1, steps + 1):  # eval every 20 steps; train loss is pre-update (the previous loss)
            points.append(CurvePoint(step, step * 64, losses[step - 2] if step >= 2 else 4.0,
                                     losses[step - 1] if step % 20 == 0 else None,
                                     base_lr * multipliers[step - 1], 1.0, 0.01 * step))
        store.add_curve(run_id, points)
        store.finish_run(run_id, status="ok", final_eval_loss=float(losses[-1]))
        run_ids[name] = run_id

    lr, eval_loss = curve_arrays(store.curve(run_ids["cosine"]), "eval")
    assert lr.size == steps and np.isfinite(eval_loss).sum() == steps // 20
    _, train_loss = curve_arrays(store.curve(run_ids["cosine"]), "train")
    assert np.isfinite(train_loss).sum() == steps - 1

    app = typer.Typer()
    app.command("predict")(predict_command)
    app.command("noop")(lambda: None)  # a second command keeps "predict" a named subcommand
    runner = typer_testing.CliRunner()
    listing = runner.invoke(app, ["predict", "--out", str(tmp_path)])
    assert listing.exit_code == 0 and "lm/tiny/adamw" in listing.output
    plot = tmp_path / "pred.png"
    result = runner.invoke(app, [
        "predict", "--out", str(tmp_path), "--fit", f"{run_ids['constant']},{run_ids['cosine']}",
        "-s", "wsd:decay_fraction=0.2", "-s", "linear", "--plot", str(plot),
    ], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "L(s) =" in result.output and "linear" in result.output
    assert f"run {run_ids['wsd']}" in result.output  # the observed WSD run was found and compared
    assert plot.exists()
    bad = runner.invoke(app, ["predict", "--out", str(tmp_path), "--fit", "999"])
    assert bad.exit_code == 2 and "no run with id 999" in bad.output
