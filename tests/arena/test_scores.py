"""The study-level scores against hand computations: AlgoPerf profiles, Fantastic speedup, LR sensitivity."""

import math

import pytest

from optarena.arena.report import ranking_rows, write_report
from optarena.arena.scores import (
    benchmark_score,
    final_losses,
    geometric_mean_speedup,
    performance_profile,
    performance_ratios,
    score_study,
)
from optarena.arena.summaries import (
    OptimizerSummary,
    ProblemSummary,
    TrialPoint,
    lr_sensitivity_from_trials,
    summarize_study,
)
from optarena.arena.store import CurvePoint, ResultStore
from optarena.arena.workloads import get_workload
from optarena.scaling.data_scaling import data_equivalent_speedups, fit_data_scaling

INF = math.inf

# 3 optimizers x 2 workloads, steps to target (inf: never reached). By hand:
#   workload 1: best 100 -> ratios A 1, B 1.5, C 5 (> r_max = 4, so inf)
#   workload 2: best 100 -> ratios A 2, B 1, C inf
#   B_s = mean_w (4 - r_w) / 3 over ratios <= 4:  A (3 + 2)/6 = 5/6,  B (2.5 + 3)/6 = 11/12,  C 0
TOY = {"A": [100.0, 200.0], "B": [150.0, 100.0], "C": [500.0, INF]}


def test_performance_ratios_and_profile_by_hand():
    ratios = performance_ratios(TOY)
    assert ratios == {"A": [1.0, 2.0], "B": [1.5, 1.0], "C": [INF, INF]}
    rho = performance_profile(ratios, [1.0, 1.2, 1.5, 1.99, 2.0, 4.0])
    assert rho["A"] == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert rho["B"] == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert rho["C"] == [0.0] * 6
    # weights: workload 2 counts 3 times as much as workload 1
    assert performance_profile(ratios, [1.0], weights=[1, 3]) == {"A": [0.25], "B": [0.75], "C": [0.0]}


def test_benchmark_score_by_hand_and_algoperf_trapezoid():
    ratios = performance_ratios(TOY)
    scores = benchmark_score(ratios)
    assert scores["A"] == pytest.approx(5 / 6)
    assert scores["B"] == pytest.approx(11 / 12)
    assert scores["C"] == 0.0
    # AlgoPerf's 100-point trapezoid rule approximates the exact integral of the step function
    coarse = benchmark_score(ratios, grid=100)
    assert coarse["A"] == pytest.approx(5 / 6, abs=0.01) and coarse["B"] == pytest.approx(11 / 12, abs=0.01)
    # weights [1, 3]: A (3 + 3*2)/(4*3) = 0.75, B (2.5 + 3*3)/(4*3) = 23/24
    weighted = benchmark_score(ratios, weights=[1, 3])
    assert weighted["A"] == pytest.approx(0.75) and weighted["B"] == pytest.approx(23 / 24)
    # r_max = 2: only ratios <= 2 count; A (1 + 0)/2 = 0.5, B (0.5 + 1)/2 = 0.75
    narrow = benchmark_score(performance_ratios(TOY, r_max=2), r_max=2)
    assert narrow["A"] == pytest.approx(0.5) and narrow["B"] == pytest.approx(0.75)


def test_ratio_edge_cases():
    # nobody solves the problem: every ratio inf; a target met at step 0 gives ratio 1 there
    assert performance_ratios({"A": [INF, 0.0], "B": [INF, 5.0]}) == {"A": [INF, 1.0], "B": [INF, INF]}
    with pytest.raises(ValueError, match="one time per problem"):
        performance_ratios({"A": [1.0], "B": [1.0, 2.0]})
    with pytest.raises(ValueError, match="times must be >= 0"):
        performance_ratios({"A": [-1.0]})
    with pytest.raises(ValueError, match="r_max must be > 1"):
        benchmark_score({"A": [1.0]}, r_max=1.0)


def test_geometric_mean_speedup_by_hand():
    speedups = geometric_mean_speedup(TOY, "A", budgets=[1000, 1000])
    assert speedups["A"] == pytest.approx(1.0)
    assert speedups["B"] == pytest.approx(math.sqrt(100 / 150 * 200 / 100))
    # never reaching the target counts as budget + 1 step (AlgoPerf's compute_speedups)
    assert speedups["C"] == pytest.approx(math.sqrt(100 / 500 * 200 / 1001))
    with pytest.raises(ValueError, match="baseline 'Z' has no times"):
        geometric_mean_speedup(TOY, "Z", budgets=[1, 1])


def test_fantastic_fit_reproduces_the_worked_example():
    # the worked example of Wen et al.'s speedup estimate (arXiv:2509.02046, from their released sweep data):
    # AdamW 130M at 1/2/4/8x Chinchilla; Muon reaches 3.2373 at 8x
    fit = fit_data_scaling([1, 2, 4, 8], [3.5291, 3.4078, 3.3217, 3.2606])
    assert fit.alpha == pytest.approx(0.418, abs=1e-3)
    assert fit.exponent == pytest.approx(0.495, abs=1e-3)
    assert fit.beta == pytest.approx(3.111, abs=1e-3)
    assert fit.effective_data(3.2373) == pytest.approx(11.26, abs=0.02)
    assert fit.speedup(3.2373, 8) == pytest.approx(1.41, abs=0.005)
    assert fit.effective_data(3.0) == INF  # below the fitted floor beta: AdamW never gets there
    # the speedup does not depend on the unit of D
    steps = fit_data_scaling([100, 200, 400, 800], [3.5291, 3.4078, 3.3217, 3.2606])
    assert steps.speedup(3.2373, 800) == pytest.approx(fit.speedup(3.2373, 8), rel=1e-4)


def test_fantastic_fit_refuses_to_guess():
    with pytest.raises(ValueError, match="at least 3 distinct budgets, got 2"):
        fit_data_scaling([1, 2], [3.5, 3.4])
    with pytest.raises(ValueError, match="not decreasing|do not flatten"):
        fit_data_scaling([1, 2, 4], [3.0, 3.2, 3.5])
    # losses that fall faster at every doubling identify no floor
    with pytest.raises(ValueError, match="do not flatten with the budget"):
        fit_data_scaling([1, 2, 4], [238.19, 202.26, 149.26])


def _summary(name, losses, steps=100):
    return OptimizerSummary(name, [], {"lr": 1e-3}, list(losses), [1] * len(losses), steps_per_run=steps)


def test_data_equivalent_speedups_per_workload_and_scale():
    adamw = [3.5291, 3.4078, 3.3217, 3.2606]
    cells = [ProblemSummary("lm", "tiny", "adamw", 100 * 2**i, None, [_summary("adamw", [loss])])
             for i, loss in enumerate(adamw)]
    cells[-1].optimizers.append(_summary("muon", [3.2373, 3.2373]))
    cells.append(ProblemSummary("lm", "small", "adamw", 100, None, [_summary("adamw", [3.3]),
                                                                 _summary("muon", [3.2])]))
    tiny, small = data_equivalent_speedups(final_losses(cells))
    assert (tiny.workload, tiny.scale, tiny.budgets, tiny.unit) == ("lm", "tiny", [100, 200, 400, 800], 100)
    assert tiny.reason is None and tiny.fit.exponent == pytest.approx(0.495, abs=1e-3)
    assert tiny.speedups["muon"] == {800: pytest.approx(1.41, abs=0.005)}
    assert all(v == pytest.approx(1.0, abs=0.02) for v in tiny.speedups["adamw"].values())  # fit residuals
    assert small.fit is None and small.speedups == {}
    assert "1 budget(s) of adamw (100 steps)" in small.reason and "at least 3" in small.reason


def test_lr_sensitivity_on_a_hand_made_sweep():
    # l0 = 5; losses 3.5, 3.2, 3.3, diverged (-> l0) and one above l0 (-> capped at l0); best 3.2
    trials = [
        TrialPoint({"lr": 1e-3}, "ok", 3.5, initial_eval_loss=5.0),
        TrialPoint({"lr": 3e-3}, "ok", 3.2, initial_eval_loss=5.0),
        TrialPoint({"lr": 1e-2}, "ok", 3.3, initial_eval_loss=5.0),
        TrialPoint({"lr": 3e-2}, "diverged", None, initial_eval_loss=5.0),
        TrialPoint({"lr": 1e-1}, "ok", 6.0, initial_eval_loss=5.0),
        TrialPoint({"lr": 3e-1}, "failed", None, initial_eval_loss=5.0),  # a harness error: left out
    ]
    value, basis = lr_sensitivity_from_trials(trials)
    assert value == pytest.approx((0.3 + 0.0 + 0.1 + 1.8 + 1.8) / 5)
    assert basis == "all 5 trials (other hyperparameters vary too)"
    # a pure lr sweep around the best configuration is preferred when it has >= 3 learning rates
    sweep = [TrialPoint({"lr": lr, "wd": 0.1}, "ok", loss, initial_eval_loss=5.0)
             for lr, loss in [(1e-3, 3.4), (3e-3, 3.2), (1e-2, 3.6)]]
    other = [TrialPoint({"lr": 1e-2, "wd": 0.0}, "diverged", None, initial_eval_loss=5.0)]
    value, basis = lr_sensitivity_from_trials(sweep + other, best_hparams={"lr": 3e-3, "wd": 0.1})
    assert value == pytest.approx((0.2 + 0.0 + 0.4) / 3)
    assert basis == "lr sweep of 3 runs around the best configuration"
    assert lr_sensitivity_from_trials(trials[:1]) == (None, "fewer than 2 learning rates tried")
    assert lr_sensitivity_from_trials([TrialPoint({"lr": 1e-3}, "ok", 3.0)] * 2)[0] is None  # no l0 stored


# -- the same scores read from a store ------------------------------------------------------------

def _add_run(store, study, optimizer, steps, hparams, final, *, role="trial", trial=0, seed=0, l0=5.0,
             workload="quadratic", scale="default", metrics=None):
    config = {"workload": workload, "scale": scale, "optimizer": optimizer, "seed": seed, "steps": steps,
              "hparams": hparams}
    key = f"{workload}/{scale}/{optimizer}/{steps}/{sorted(hparams.items())}/{seed}"
    run_id = store.start_run(key, config=config)
    status = "ok" if final is not None else "diverged"
    # a straight line from l0 at step 0 to the final loss at `steps`, evaluated at 0, steps/2, steps
    losses = [l0, (l0 + final) / 2, final] if final is not None else [l0, 50.0]
    points = [CurvePoint(round(i * steps / 2), 0, None, loss, None, None, None) for i, loss in enumerate(losses)]
    store.add_curve(run_id, points)
    store.finish_run(run_id, status=status, final_eval_loss=final, metrics=metrics)
    store.link(study, run_id, role=role, trial=trial if role == "trial" else None)
    return run_id


def test_summaries_and_profile_from_a_store(tmp_path, monkeypatch):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for steps, (base_loss, fast_loss) in {100: (3.0, 2.0), 200: (2.5, 1.25)}.items():
        _add_run(store, "s", "adamw", steps, {"lr": 1e-3}, base_loss + 0.5, trial=0)
        _add_run(store, "s", "adamw", steps, {"lr": 1e-2}, base_loss, trial=1)
        _add_run(store, "s", "adamw", steps, {"lr": 1e-2}, base_loss, role="seed", seed=1)
        _add_run(store, "s", "sgd", steps, {"lr": 1e-1}, fast_loss, trial=0)
        _add_run(store, "s", "sgd", steps, {"lr": 1.0}, None, trial=1)
    cells = summarize_study(store, "s")
    assert [(c.workload, c.scale, c.steps) for c in cells] == [("quadratic", "default", 100),
                                                                ("quadratic", "default", 200)]
    cell = cells[0]
    adamw, sgd = cell.get("adamw"), cell.get("sgd")
    assert cell.target == 3.0 and adamw.final_losses == [3.0, 3.0] and adamw.initial_loss == 5.0
    assert adamw.lr_sensitivity == pytest.approx(0.5 / 2) and sgd.lr_sensitivity == pytest.approx((0 + 3) / 2)
    assert (adamw.budget_runs, adamw.budget_steps, sgd.budget_runs) == (3, 300, 2)
    # sgd's line 5 -> 3.5 (step 50) -> 2 (step 100) reaches adamw's 3.0 at step 50 + 50 * 0.5/1.5
    assert sgd.steps_to_target == pytest.approx(50 + 50 / 3)
    assert sgd.speedup == pytest.approx(100 / (50 + 50 / 3))

    # on 200 steps sgd's line 5 -> 3.125 -> 1.25 reaches 2.5 at 100 + 100 * 0.625/1.875 = 133.3: ratio 1.5 again
    scores = score_study(store, "s")
    profile = scores.profile
    assert [p.target_source for p in profile.problems] == ["baseline", "baseline"]
    assert [p.weight for p in profile.problems] == [0.5, 0.5]  # one workload and scale at two budgets
    assert profile.ratios["sgd"] == [1.0, 1.0] and profile.scores["sgd"] == pytest.approx(1.0)
    assert profile.ratios["adamw"] == [pytest.approx(1.5), pytest.approx(1.5)]
    assert profile.scores["adamw"] == pytest.approx((4 - 1.5) / 3)
    assert profile.geomean_speedup["sgd"] == pytest.approx(1.5)
    assert scores.budget("adamw") == (6, 900)
    [data] = scores.data_speedups
    assert data.fit is None and "at least 3" in data.reason

    # a workload target applies to cells at the workload's default budget only
    quadratic = get_workload("quadratic")
    monkeypatch.setattr(quadratic, "target", lambda scale: 2.75)
    monkeypatch.setattr(quadratic, "default_steps", lambda scale: 200)
    problems = score_study(store, "s").profile.problems
    assert [(p.target, p.target_source) for p in problems] == [(3.0, "baseline"), (2.75, "workload")]
    # on 200 steps: adamw 5 -> 3.75 (100) -> 2.5 (200) reaches 2.75 at 100 + 100 * 1/1.25 = 180 steps
    assert problems[1].times["adamw"] == pytest.approx(180.0)


def test_approximately_best_and_metrics_from_a_store(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for i, loss in enumerate([3.2000, 3.2029, 3.2031, 3.1999]):
        _add_run(store, "s", "adamw", 10, {"lr": i}, loss, trial=i, metrics={"accuracy": 0.25 * i, "loss": loss})
    _add_run(store, "s", "adamw", 10, {"lr": 9}, None, trial=4)
    _add_run(store, "s", "adamw", 10, {"lr": 3}, 3.3, role="seed", seed=1, metrics={"accuracy": 0.5})
    [cell] = summarize_study(store, "s")
    adamw = cell.get("adamw")
    assert [t.hparams["lr"] for t in adamw.approx_best] == [3, 0, 1]  # within 3e-3 of the best, best first
    assert adamw.best_hparams == {"lr": 3}
    assert cell.metric_names == ["accuracy"]  # losses are not extra metrics
    assert adamw.metrics == {"accuracy": pytest.approx((0.75 + 0.5) / 2)}  # mean over the best configuration's seeds
    [row] = ranking_rows(cell)
    assert row["final accuracy"] == "0.6250" and list(row)[-1] == "final accuracy"
    for i, loss in enumerate([2.0, 2.5]):  # no metrics recorded: the table has no metric column
        _add_run(store, "plain", "sgd", 10, {"lr": i}, loss, trial=i)
    [plain] = summarize_study(store, "plain")
    assert plain.metric_names == [] and list(ranking_rows(plain)[0]) == list(row)[:-1]


def test_report_shows_divergence_steps_failures_and_times(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    _add_run(store, "s", "adamw", 10, {"lr": 1e-3}, 2.0, trial=0)
    diverged = store.start_run("d", config={"workload": "quadratic", "scale": "default", "optimizer": "adamw",
                                            "seed": 0, "steps": 10, "hparams": {"lr": 1.0}})
    store.finish_run(diverged, status="diverged", diverged_step=4)
    store.link("s", diverged, role="trial", trial=1)
    failed = store.start_run("f", config={"workload": "quadratic", "scale": "default", "optimizer": "adamw",
                                          "seed": 0, "steps": 10, "hparams": {"lr": 7.0}})
    store.finish_run(failed, status="failed", error="ValueError: lr=7.0 is too large\nTraceback ...")
    store.link("s", failed, role="trial", trial=2)
    store.save_study("s", {"trials": 3, "seeds": 1})
    scores = write_report(store, "s", tmp_path / "out", {"trials": 3, "seeds": 1})
    [problem] = scores.problems
    assert [t.diverged_step for t in problem.get("adamw").trials] == [None, 4, None]
    report = (tmp_path / "out" / "report.md").read_text()
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if "diverged at step" in line)
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    row = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert row[0] == "adamw" and row[columns.index("diverged at step")] == "4"
    assert "Failed: adamw, 1 run: `ValueError: lr=7.0 is too large`." in report


def test_an_optimizer_whose_every_trial_diverged_gets_no_sensitivity_and_no_rank(tmp_path):
    diverged = [TrialPoint({"lr": lr}, "diverged", None, initial_eval_loss=5.0) for lr in (1e-2, 1e-1, 1.0)]
    assert lr_sensitivity_from_trials(diverged) == (None, "every trial diverged")
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    _add_run(store, "s", "adamw", 100, {"lr": 1e-3}, 3.5, trial=0)
    _add_run(store, "s", "adamw", 100, {"lr": 1e-2}, 3.0, trial=1)
    _add_run(store, "s", "sgd", 100, {"lr": 1e-1}, None, trial=0)
    _add_run(store, "s", "sgd", 100, {"lr": 1.0}, None, trial=1)
    [problem] = summarize_study(store, "s")
    rows = {row["optimizer"]: row for row in ranking_rows(problem)}
    assert rows["sgd"]["LR sensitivity"] == "—" and rows["sgd"]["rank"] == "—"
    assert rows["sgd"]["final eval loss"] == "all diverged" and rows["sgd"]["trials ok/div/fail"] == "0/2/0"
    assert rows["adamw"]["LR sensitivity"] == "0.2500" and rows["adamw"]["rank"] == "1"
    assert "note" not in rows["adamw"]  # no optimizer ran anything but its own rule
