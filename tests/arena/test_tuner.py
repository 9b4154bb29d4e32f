"""Tuning proposes the same trials every time; analysis scores from stored curves."""

import math

import pytest

from optarena.arena.store import CurvePoint, ResultStore
from optarena.arena.trainer import RunConfig
from optarena.arena.search import halton_trials
from optarena.arena.summaries import confidence_interval, steps_to_target, summarize_study
from optarena.arena.tuner import tune_cell
from optarena.optim import Categorical, FloatRange


def test_halton_trials_are_deterministic_and_inside_the_space():
    space = {"lr": FloatRange(1e-4, 1e-1), "momentum": FloatRange(0.8, 0.99, log=False),
             "nesterov": Categorical((True, False))}
    a = halton_trials(space, 16, seed=3)
    assert a == halton_trials(space, 16, seed=3) and a != halton_trials(space, 16, seed=4)
    assert all(1e-4 <= t["lr"] <= 1e-1 and 0.8 <= t["momentum"] <= 0.99 for t in a)
    assert {t["nesterov"] for t in a} == {True, False}
    lrs = sorted(math.log10(t["lr"]) for t in a)  # low discrepancy: no gap wider than 3/16 of the range
    assert max(b - a for a, b in zip([-4] + lrs, lrs + [-1])) < 3 * 3 / 16
    with pytest.raises(ValueError, match="n_trials must be >= 1, got 0"):
        halton_trials(space, 0, seed=0)


def test_steps_to_target_interpolates_between_evaluations():
    curve = [CurvePoint(s, s, None, loss, None, None, None) for s, loss in [(0, 4.0), (10, 3.0), (20, 2.0)]]
    assert steps_to_target(curve, 2.5) == pytest.approx(15.0)
    assert steps_to_target(curve, 3.0) == pytest.approx(10.0)
    assert steps_to_target(curve, 1.0) is None


def test_confidence_interval_matches_student_t():
    assert confidence_interval([1.0]) == 0.0
    # mean 2, sd 1, n 3: t_{0.975, 2} = 4.302653
    assert confidence_interval([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)


@pytest.mark.parametrize("protocol", ["random", "tpe"])
def test_tune_cell_reuses_finished_trials_and_ranks(tmp_path, protocol):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    base = RunConfig(workload="quadratic", scale="default", optimizer="adamw", steps=30, eval_every=10)
    first = tune_cell(base, store, study="s", n_trials=3, seeds=2, protocol=protocol)
    assert len(first.trials) == 3 and len(first.seed_runs) == 2
    assert all(not r.reused for _, r in first.trials)
    again = tune_cell(base, store, study="s", n_trials=3, seeds=2, protocol=protocol)
    assert all(r.reused for _, r in again.trials) and all(r.reused for r in again.seed_runs)
    assert [h for h, _ in again.trials] == [h for h, _ in first.trials]
    scores = [r.final_eval_loss for _, r in first.trials if r.status == "ok"]
    assert first.seed_runs[0].final_eval_loss == min(scores)

    tune_cell(base.model_copy(update={"optimizer": "sgd"}), store, study="s", n_trials=3, seeds=2,
              protocol=protocol)
    [cell] = summarize_study(store, "s")
    by_name = {s.optimizer: s for s in cell.optimizers}
    assert cell.target == pytest.approx(by_name["adamw"].mean)
    assert by_name["adamw"].speedup == 1.0 and len(by_name["adamw"].final_losses) == 2
    assert cell.optimizers[0].mean <= cell.optimizers[1].mean  # ranked, best first


def test_every_cell_is_an_optuna_study_that_optuna_lists_and_loads(tmp_path):
    import json

    import optuna

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultStore(url)
    base = RunConfig(workload="quadratic", scale="default", optimizer="sgd", steps=20, eval_every=10)
    results = {p: tune_cell(base, store, study=p, n_trials=3, seeds=1, protocol=p)
               for p in ("random", "coordinate", "tpe")}
    tune_cell(base, store, study="random", n_trials=3, seeds=1, protocol="random")  # a rerun adds no trial twice
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    assert len(summaries) == 3
    for protocol, result in results.items():
        [name] = [n for n in summaries if f"/{result.cell.label}/{protocol}/" in n]
        assert summaries[name].n_trials == 3
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        runs = {r.id: r for _, _, r in store.study_runs(protocol)}
        assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        for t, (hparams, run) in zip(sorted(trials, key=lambda t: t.number), result.trials):
            assert set(t.params) == set(hparams) == {"lr", "weight_decay"}
            assert t.params == pytest.approx(hparams, rel=1e-5) and t.value == run.final_eval_loss
            if protocol != "tpe":  # replayed protocols record the run each trial read back
                assert runs[t.user_attrs["run_id"]].hparams == json.loads(t.user_attrs["hparams"]) == hparams
