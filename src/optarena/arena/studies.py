"""Every cell as an Optuna study in the results database, so Optuna's tools can browse an arena.

One study per (cell, protocol, seed, run settings), named by :func:`study_name`, lives in the
same database as the runs (Optuna's tables beside ours), so ``optuna-dashboard <storage URL>``
or ``optuna.load_study(study_name=..., storage=<storage URL>)`` shows each cell's trials with
their hyperparameters and final eval losses. The ``tpe`` protocol samples in its study (Optuna's
TPE, Bergstra et al., NeurIPS 2011); ``random`` and ``coordinate`` compute their trials
themselves (see :mod:`optarena.arena.search`) and :func:`record_trials` adds each finished one.

Categorical hyperparameters are stored as the index of their choice (Optuna's categorical
distribution needs plain values); the ``hparams`` user attribute of each trial holds the
configuration exactly as it was trained, with its run key and run id.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import optuna

from optarena.arena.claims import retry_on_race
from optarena.arena.search import plain
from optarena.arena.store import Cell, RunRecord
from optarena.optim import Categorical, FloatRange
from optarena.optim.registry import SearchDim

__all__ = ["distribution", "from_optuna", "optuna_storage", "record_trials", "study_name", "suggest"]

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the arena's progress bar reports trials
_storages: dict[str, optuna.storages.RDBStorage] = {}


def study_name(cell: Cell, protocol: str, seed: int, run_key: str) -> str:
    """The Optuna study of ``cell``; ``run_key`` (the base run's key) pins every other setting."""
    return f"optarena/{cell.label}/{protocol}/seed{seed}/{run_key[:8]}"


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """One Optuna RDB storage per URL and process (SQLite: wait on locks instead of failing)."""
    if url not in _storages:
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        _storages[url] = retry_on_race(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))
    return _storages[url]


def distribution(dim: SearchDim) -> optuna.distributions.BaseDistribution:
    if isinstance(dim, FloatRange):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Categorical):
        return optuna.distributions.CategoricalDistribution(list(range(len(dim.choices))))
    raise TypeError(f"unsupported search dimension {dim!r}; valid: FloatRange, Categorical")


def suggest(trial: optuna.Trial, name: str, dim: SearchDim) -> Any:
    """Ask ``trial`` for a value of ``name`` over ``dim`` (floats rounded as every trial's are)."""
    if isinstance(dim, FloatRange):
        return plain(trial.suggest_float(name, dim.low, dim.high, log=dim.log))
    if isinstance(dim, Categorical):
        return dim.choices[trial.suggest_categorical(name, list(range(len(dim.choices))))]
    raise TypeError(f"unsupported search dimension {dim!r}; valid: FloatRange, Categorical")


def from_optuna(dim: SearchDim, value: Any) -> Any:
    return dim.choices[value] if isinstance(dim, Categorical) else plain(value)


def _to_optuna(dim: SearchDim, value: Any) -> Any:
    if isinstance(dim, Categorical):
        return dim.choices.index(value)
    return min(max(float(value), dim.low), dim.high)  # 6-digit rounding may step just outside the range


def record_trials(study: optuna.Study, space: Mapping[str, SearchDim],
                  trials: Sequence[tuple[int, dict[str, Any], RunRecord]]) -> int:
    """Add each ``(trial number, hparams, finished run)`` the study does not hold yet; returns how many.

    A run that diverged is a failed trial (no value). Call it while holding the study's claim
    (:func:`optarena.arena.claims.Claims.try_claim`), so concurrent workers do not add a trial twice.
    """
    present = {t.user_attrs.get("trial") for t in study.get_trials(deepcopy=False)}
    added = 0
    for number, hparams, run in trials:
        if number in present:
            continue
        value = run.final_eval_loss if run.status == "ok" else None
        ok = value is not None and math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(
            params={name: _to_optuna(space[name], v) for name, v in hparams.items() if name in space},
            distributions={name: distribution(space[name]) for name in hparams if name in space},
            value=value if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs={"trial": number, "run_key": run.key, "run_id": run.id, "status": run.status,
                        "hparams": json.dumps(hparams, sort_keys=True, default=str)},
        ))
        added += 1
    return added
