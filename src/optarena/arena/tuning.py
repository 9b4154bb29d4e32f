"""Fair tuning: the same number of trials for every optimizer, drawn from its registered space.

Protocols:

- ``random``: quasirandom scrambled Halton points over the search space (AlgoPerf's external
  tuning, ARENA.md §1.3). Trial ``i`` of a cell is a fixed function of (space, seed, i), so a
  rerun or a killed-and-restarted arena proposes exactly the same trials and reuses the
  finished ones from the store.
- ``tpe``: Optuna's TPE sampler in an Optuna study kept in the same database, so it resumes
  and several processes can share it.

After tuning, the best configuration (lowest end-of-training eval loss) is rerun on
``seeds - 1`` further seeds. The budget is recorded with every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
from scipy.stats import qmc

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, RunResult, train
from optarena.optim import Categorical, FloatRange, get_spec
from optarena.optim.registry import SearchDim

__all__ = ["PROTOCOLS", "CellResult", "halton_trials", "tune_cell"]

PROTOCOLS = ("random", "tpe")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress bar reports trials


def halton_trials(space: Mapping[str, SearchDim], n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` scrambled-Halton points mapped onto ``space`` (keys in sorted order)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    names = sorted(space)
    points = qmc.Halton(d=len(names), scramble=True, seed=seed).random(n_trials)
    return [{name: _plain(space[name].from_unit(float(u))) for name, u in zip(names, row)} for row in points]


def _plain(value: Any) -> Any:
    """Round floats to 6 significant digits: readable configs, stable keys."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _suggest(trial: optuna.Trial, name: str, dim: SearchDim) -> Any:
    if isinstance(dim, FloatRange):
        return _plain(trial.suggest_float(name, dim.low, dim.high, log=dim.log))
    if isinstance(dim, Categorical):
        index = trial.suggest_categorical(name, list(range(len(dim.choices))))
        return dim.choices[index]
    raise TypeError(f"unsupported search dimension {dim!r}")


@dataclass
class CellResult:
    """The outcome of tuning one (workload, scale, optimizer) cell."""

    cell: str
    trials: list[tuple[dict[str, Any], RunResult]]
    best_hparams: dict[str, Any] | None
    seed_runs: list[RunResult]


def _score(result: RunResult) -> float:
    return result.final_eval_loss if result.status == "ok" and result.final_eval_loss is not None else math.inf


def tune_cell(
    base: RunConfig,
    store: ResultStore,
    *,
    study: str,
    n_trials: int,
    seeds: int = 1,
    protocol: str = "random",
    checkpoint_dir: str | None = None,
    on_run: Callable[[str, RunResult], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> CellResult:
    """Tune ``base.optimizer`` on ``base``'s workload with ``n_trials`` trials, then rerun the best on more seeds.

    Every run used is linked to ``study`` in the store (see :meth:`ResultStore.link`).

    ``base.hparams`` are fixed values applied under every trial's tuned ones.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    spec = get_spec(base.optimizer)
    cell = f"{base.workload}/{base.scale}/{base.optimizer}"

    def run(hparams: dict[str, Any], *, seed: int, role: str, trial: int | None) -> RunResult:
        config = base.model_copy(update={"hparams": {**base.hparams, **hparams}, "seed": seed})
        result = train(config, store, cell=cell, checkpoint_dir=checkpoint_dir, on_step=on_step)
        if result.run_id is not None:
            store.link(study, result.run_id, role=role, trial=trial)
        if on_run is not None:
            on_run(f"{role} {trial if trial is not None else seed}", result)
        return result

    trials: list[tuple[dict[str, Any], RunResult]] = []
    if protocol == "random":
        for i, hparams in enumerate(halton_trials(spec.search_space, n_trials, base.seed)):
            trials.append((hparams, run(hparams, seed=base.seed, role="trial", trial=i)))
    else:
        optuna_study = optuna.create_study(
            study_name=f"optarena/{cell}/seed{base.seed}/{base.key()[:8]}", storage=store.url,
            sampler=optuna.samplers.TPESampler(seed=base.seed), direction="minimize", load_if_exists=True,
        )
        stale = {t.number for t in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        for number in stale:  # its process died before telling a result; it does not count
            optuna_study.tell(number, state=optuna.trial.TrialState.FAIL)
        # Diverged trials were told as FAIL too, and do count: their runs are in the store.
        done = [t for t in optuna_study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in stale
                and t.user_attrs.get("counted")]
        for past in done:
            hparams = {n: _from_optuna(spec.search_space[n], v) for n, v in past.params.items()}
            trials.append((hparams, run(hparams, seed=base.seed, role="trial", trial=past.number)))
        while len(trials) < n_trials:
            trial = optuna_study.ask()
            hparams = {name: _suggest(trial, name, dim) for name, dim in sorted(spec.search_space.items())}
            result = run(hparams, seed=base.seed, role="trial", trial=trial.number)
            score = _score(result)
            trial.set_user_attr("counted", True)
            optuna_study.tell(trial, score if math.isfinite(score) else None,
                       state=None if math.isfinite(score) else optuna.trial.TrialState.FAIL)
            trials.append((hparams, result))

    ranked = sorted(range(len(trials)), key=lambda i: (_score(trials[i][1]), i))
    best = trials[ranked[0]] if trials and math.isfinite(_score(trials[ranked[0]][1])) else None
    seed_runs: list[RunResult] = []
    if best is not None:
        seed_runs.append(best[1])
        for extra in range(1, seeds):
            seed_runs.append(run(best[0], seed=base.seed + extra, role="seed", trial=None))
    return CellResult(cell, trials, best[0] if best else None, seed_runs)


def _from_optuna(dim: SearchDim, value: Any) -> Any:
    return dim.choices[value] if isinstance(dim, Categorical) else _plain(value)
