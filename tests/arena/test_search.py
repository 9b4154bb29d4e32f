"""Coordinate descent: grids from the registry, the grid optimum on a toy objective, budget, determinism, resume."""

import math

import pytest

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig
from optarena.arena.search import (
    MAX_REFINEMENTS,
    approximately_best,
    coordinate_grids,
    coordinate_trials,
    select_best,
)
from optarena.arena.tuner import tune_cell
from optarena.optim import Categorical, FloatRange, get_spec

SPACE = {
    "lr": FloatRange(1e-4, 1e-1),
    "weight_decay": FloatRange(1e-3, 1.0),
    "momentum": FloatRange(0.0, 1.0, log=False),
    "kind": Categorical(("a", "b", "c")),
}
DEFAULTS = {"lr": 1e-3, "weight_decay": 0.0, "momentum": 0.5, "kind": "a"}


def _toy(h):
    """Separable bowl with its minimum on grid points: lr = 8e-3, wd = 0.064, momentum = 0.75, kind = c."""
    return ((math.log2(h["lr"] / 8e-3)) ** 2 + (math.log(h["weight_decay"] / 0.064, 4)) ** 2
            + (4 * (h["momentum"] - 0.75)) ** 2 + {"a": 1.0, "b": 0.5, "c": 0.0}[h["kind"]])


def test_grids_follow_the_registered_space_and_defaults():
    baseline, grids = coordinate_grids(SPACE, DEFAULTS)
    assert baseline == {"lr": 1e-3, "weight_decay": 1e-3, "momentum": 0.5, "kind": "a"}  # wd=0 is outside: low end
    assert grids["lr"] == [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 0.016, 0.032, 0.064]  # factor 2, in range
    assert grids["weight_decay"] == [1e-3, 4e-3, 0.016, 0.064, 0.256]  # factor 4
    assert grids["momentum"] == [0.0, 0.25, 0.5, 0.75, 1.0]  # quarters of a linear range
    assert grids["kind"] == ["a", "b", "c"]
    adamw = get_spec("adamw")
    baseline, grids = coordinate_grids(adamw.search_space, adamw.defaults)
    assert baseline == {"lr": adamw.defaults["lr"], "weight_decay": adamw.defaults["weight_decay"]}
    assert grids["lr"] == [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 0.016]


def test_coordinate_descent_finds_the_grid_optimum_and_stops_there():
    plan = coordinate_trials(SPACE, DEFAULTS, 200, _toy)
    assert plan.finished and plan.stopped == "local optimum"
    best = min(plan.trials, key=_toy)
    assert best == {"lr": 8e-3, "weight_decay": 0.064, "momentum": 0.75, "kind": "c"}
    assert len({tuple(sorted(h.items())) for h in plan.trials}) == len(plan.trials)  # nothing runs twice
    assert plan.rounds[0]["trials"][0] == 0 and plan.trials[0] == coordinate_grids(SPACE, DEFAULTS)[0]
    assert max(r["level"] for r in plan.rounds) == MAX_REFINEMENTS  # refinements spent leftover budget
    # Round 1 is the baseline plus every 1-D sweep (Fantastic's create_configs): 1 + 9 + 4 + 4 + 2.
    assert len(plan.rounds[0]["trials"]) == 20
    assert plan.trials[1]["lr"] == 2e-3 and plan.trials[2]["lr"] == 5e-4  # lr first, nearest first, above first


def test_coupled_objective_needs_several_rounds():
    """On a bowl whose axes are coupled, each round moves the baseline until a local optimum is reached."""
    space = {"lr": FloatRange(1e-4, 1e-1), "momentum": FloatRange(0.0, 1.0, log=False)}

    def coupled(h):
        x, y = math.log2(h["lr"] / 1e-3), 4 * h["momentum"]  # grid coordinates: x, y integers on the grid
        return 0.5 * (x - y) ** 2 + (x - 3) ** 2

    plan = coordinate_trials(space, {"lr": 1e-3, "momentum": 0.0}, 200, coupled)
    # (0,0) -> lr to x=2 -> momentum to y=2 -> lr to x=3 -> momentum to y=3 -> no move: five level-0 rounds.
    assert [r["baseline"] for r in plan.rounds if r["level"] == 0] == [
        {"lr": 1e-3, "momentum": 0.0}, {"lr": 4e-3, "momentum": 0.0}, {"lr": 4e-3, "momentum": 0.5},
        {"lr": 8e-3, "momentum": 0.5}, {"lr": 8e-3, "momentum": 0.75}]
    assert min(plan.trials, key=coupled) == {"lr": 8e-3, "momentum": 0.75}


@pytest.mark.parametrize("budget", [1, 5, 23])
def test_budget_is_respected_exactly(budget):
    plan = coordinate_trials(SPACE, DEFAULTS, budget, _toy)
    assert plan.finished and plan.stopped == "budget" and len(plan.trials) == budget


def test_replay_is_deterministic_and_resumes_one_result_at_a_time():
    straight = coordinate_trials(SPACE, DEFAULTS, 40, _toy)
    assert straight.trials == coordinate_trials(SPACE, DEFAULTS, 40, _toy).trials
    known: dict[tuple, float] = {}  # a store that learns one result per "process lifetime"
    for _ in range(100):
        plan = coordinate_trials(SPACE, DEFAULTS, 40, lambda h: known.get(tuple(sorted(h.items()))))
        if plan.finished:
            break
        first = plan.trials[plan.pending[0]]
        known[tuple(sorted(first.items()))] = _toy(first)
    assert plan.trials == straight.trials and plan.stopped == straight.stopped


def test_divergence_counts_as_infinitely_bad():
    def score(h):
        return math.inf if h["lr"] > 4e-3 else _toy(h)  # the runs above 4e-3 "diverge"

    plan = coordinate_trials(SPACE, DEFAULTS, 60, score)
    assert any(h["lr"] > 4e-3 for h in plan.trials)
    assert all(r["baseline"]["lr"] <= 4e-3 for r in plan.rounds)
    assert min(plan.trials, key=score)["lr"] == 4e-3


def test_best_and_approximately_best_are_one_rule():
    assert approximately_best([2.0, 2.002, 2.004, None, math.inf, 1.9995]) == [0, 1, 5]
    assert approximately_best([None, math.nan]) == []
    assert select_best([2.0, None, math.inf, 1.5, 1.5]) == 3  # ties to the earlier trial
    assert select_best([None, math.nan, math.inf]) is None
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        approximately_best([1.0], tolerance=-1.0)


class _Killed(BaseException):
    """Stands for SIGKILL: escapes the trainer and the tuner without cleanup."""


def test_tune_cell_coordinate_resumes_after_a_kill_with_the_same_trials(tmp_path):
    base = RunConfig(workload="quadratic", scale="default", optimizer="sgd", steps=20, eval_every=10)
    straight = tune_cell(base, ResultStore(f"sqlite:///{tmp_path / 'a.db'}"), study="s", n_trials=5, seeds=2,
                         protocol="coordinate")
    assert len(straight.trials) == 5 and len(straight.seed_runs) == 2
    assert straight.trials[0][0] == {"lr": 0.1, "weight_decay": 1e-6}  # the registry defaults (wd moved into range)

    store = ResultStore(f"sqlite:///{tmp_path / 'b.db'}")
    calls = []

    def kill_in_third_run(done, total):
        calls.append(done)
        if len(calls) == 2 * 20 + 15:
            raise _Killed

    with pytest.raises(_Killed):
        tune_cell(base, store, study="s", n_trials=5, seeds=2, protocol="coordinate",
                  checkpoint_dir=str(tmp_path / "ckpt"), on_step=kill_in_third_run)
    again = tune_cell(base, store, study="s", n_trials=5, seeds=2, protocol="coordinate",
                      checkpoint_dir=str(tmp_path / "ckpt"))
    assert [h for h, _ in again.trials] == [h for h, _ in straight.trials]
    assert [r.final_eval_loss for _, r in again.trials] == [r.final_eval_loss for _, r in straight.trials]
    assert [r.reused for _, r in again.trials] == [True, True, False, False, False]
    assert again.best_hparams == straight.best_hparams
    links = store.study_runs("s")
    assert sorted(t for role, t, _ in links if role == "trial") == [0, 1, 2, 3, 4]  # each trial exactly once
    assert len(store.runs()) == 6
