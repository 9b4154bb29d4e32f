"""Search: which configurations a cell tries, as pure functions of the settings and known scores.

Nothing here trains or touches a database, so the trial sequence of a protocol can be replayed
from the results already recorded.

- :func:`halton_trials`: quasirandom scrambled Halton points over a search space, AlgoPerf's
  external tuning (Dahl et al., "Benchmarking Neural Network Training Algorithms",
  arXiv:2306.07179). Trial ``i`` is a fixed function of (space, seed, i).
- :func:`coordinate_trials`: coordinate descent over per-hyperparameter grids (Wen et al.,
  "Fantastic Pretraining Optimizers and Where to Find Them", arXiv:2509.02046).
- :func:`select_best` and :func:`approximately_best`: the one rule, used by the tuner and by
  the analysis, for the best run of a cell (lowest end-of-training loss, ties to the earlier
  trial) and for the runs within ``APPROX_BEST_TOLERANCE`` of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from scipy.stats import qmc

from optarena.optim import Categorical, FloatRange
from optarena.optim.registry import SearchDim

__all__ = [
    "APPROX_BEST_TOLERANCE",
    "MAX_REFINEMENTS",
    "CoordinatePlan",
    "approximately_best",
    "coordinate_grids",
    "config_id",
    "coordinate_trials",
    "halton_trials",
    "plain",
    "select_best",
]

APPROX_BEST_TOLERANCE = 3e-3  # Fantastic's grab_best_run threshold: within 3e-3 loss of the best


def _finite(loss: float | None) -> bool:
    return loss is not None and math.isfinite(loss)


def select_best(losses: Sequence[float | None]) -> int | None:
    """Index of the lowest final loss (ties to the earlier one); ``None`` when no loss is finite.

    A missing or non-finite loss (diverged, failed, not finished) never wins.
    """
    finite = [i for i, loss in enumerate(losses) if _finite(loss)]
    return min(finite, key=lambda i: (losses[i], i)) if finite else None


def approximately_best(losses: Sequence[float | None], tolerance: float = APPROX_BEST_TOLERANCE) -> list[int]:
    """Indices (ascending) of the finite losses within ``tolerance`` of the best one.

    Fantastic's "approximately best" runs (``grab_best_run(thshold=3e-3)``, arXiv:2509.02046).
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    best = select_best(losses)
    if best is None:
        return []
    return [i for i, loss in enumerate(losses) if _finite(loss) and loss <= losses[best] + tolerance]


def halton_trials(space: Mapping[str, SearchDim], n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` scrambled-Halton points mapped onto ``space`` (keys in sorted order)."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    names = sorted(space)
    points = qmc.Halton(d=len(names), scramble=True, seed=seed).random(n_trials)
    return [{name: plain(space[name].from_unit(float(u))) for name, u in zip(names, row)} for row in points]


def plain(value: Any) -> Any:
    """Round floats to 6 significant digits: readable configs, stable keys."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


# -- coordinate descent ----------------------------------------------------------------------

LR_GRID_RATIO = 2.0  # learning rates: factor-2 steps, as Fantastic's grids (4e-3, 8e-3, 1.6e-2, ...)
LOG_GRID_RATIO = 4.0  # other log-scaled keys (weight decay, eps, ...): a few points per decade pair
LINEAR_GRID_STEPS = 4  # linear keys: the range in quarters (five points)
MAX_REFINEMENTS = 3  # grid halvings after a local optimum while trial budget is left


def _is_lr(name: str) -> bool:
    return name == "lr" or name.endswith("_lr")


def _key_order(names: list[str]) -> list[str]:
    """The order keys are swept in a round: ``lr`` first, then other learning rates, then the rest."""
    return sorted(names, key=lambda n: (n != "lr", not _is_lr(n), n))


def _anchor(dim: FloatRange, default: Any) -> float:
    """The registry default, or the nearest end of the range when the default lies outside it (e.g. wd=0)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)) or not math.isfinite(default):
        return dim.low if dim.log else (dim.low + dim.high) / 2
    return min(max(float(default), dim.low), dim.high)


def _float_step(name: str, dim: FloatRange) -> float:
    """Grid spacing at level 0: a ratio for log-scaled keys, a width for linear ones."""
    if dim.log:
        return LR_GRID_RATIO if _is_lr(name) else LOG_GRID_RATIO
    return (dim.high - dim.low) / LINEAR_GRID_STEPS


def _inside(dim: FloatRange, value: float) -> bool:
    slack = 1e-9 * max(abs(dim.low), abs(dim.high))
    return dim.low - slack <= value <= dim.high + slack


def coordinate_grids(
    space: Mapping[str, SearchDim], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The baseline configuration and one discrete grid per tuned key.

    The baseline is the registry default of each key (moved to the nearest end of the
    range where the default lies outside the registered space, e.g. weight decay 0 under a
    log range). Grids are anchored at the baseline: learning rates (``lr``, ``*_lr``) in
    factor-2 steps, other log-scaled keys in factor-4 steps, linear keys in steps of a
    quarter of the range, all inside the registered range; categoricals take every choice.
    """
    baseline: dict[str, Any] = {}
    grids: dict[str, list[Any]] = {}
    for name in sorted(space):
        dim, default = space[name], defaults.get(name)
        if isinstance(dim, Categorical):
            grids[name] = list(dim.choices)
            baseline[name] = default if default in dim.choices else dim.choices[0]
            continue
        anchor, step = _anchor(dim, default), _float_step(name, dim)
        if dim.log:
            lowest = math.ceil(math.log(dim.low / anchor) / math.log(step) - 1e-9)
            highest = math.floor(math.log(dim.high / anchor) / math.log(step) + 1e-9)
            grid = [plain(anchor * step**k) for k in range(lowest, highest + 1)]
        else:
            lowest = math.ceil((dim.low - anchor) / step - 1e-9)
            highest = math.floor((dim.high - anchor) / step + 1e-9)
            grid = [plain(anchor + k * step) for k in range(lowest, highest + 1)]
        grids[name] = grid
        baseline[name] = plain(anchor)
    return baseline, grids


def config_id(hparams: Mapping[str, Any]) -> tuple:
    """A hashable identity of a configuration (values by repr, keys sorted)."""
    return tuple(sorted((k, repr(v)) for k, v in hparams.items()))


def _sweep(values: list[Any], current: Any) -> list[Any]:
    """``values`` other than ``current``, nearest (in grid position) first, the later one first on ties."""
    position = values.index(current)
    others = [i for i in range(len(values)) if i != position]
    return [values[i] for i in sorted(others, key=lambda i: (abs(i - position), i < position))]


def _round_candidates(space: Mapping[str, SearchDim], grids: Mapping[str, list[Any]], baseline: dict[str, Any],
                      level: int) -> list[dict[str, Any]]:
    """One round: each key swept in 1-D around ``baseline``.

    Level 0 sweeps each key's whole grid (Fantastic's ``create_configs``). Level ``l >= 1``
    (ours, used only when a local optimum is reached with trial budget left) tries the two
    points at 1/2**l of the level-0 spacing on either side of the baseline for float keys.
    """
    candidates = []
    for name in _key_order(list(space)):
        dim, current = space[name], baseline[name]
        if level == 0:
            values = _sweep(grids[name], current)
        elif isinstance(dim, Categorical):
            values = []
        else:
            step = _float_step(name, dim)
            if dim.log:
                factor = step ** (0.5**level)
                values = [current * factor, current / factor]
            else:
                values = [current + step * 0.5**level, current - step * 0.5**level]
            values = [plain(v) for v in values if _inside(dim, v)]
        candidates += [{**baseline, name: value} for value in values]
    return candidates


@dataclass
class CoordinatePlan:
    """Where coordinate descent stands given the results known so far."""

    trials: list[dict[str, Any]]  # every trial proposed so far, in trial order
    pending: list[int]  # indices of ``trials`` whose results are needed before it can go on
    finished: bool
    stopped: str | None = None  # "budget" | "local optimum" once finished
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: level, baseline, trial indices


def coordinate_trials(
    space: Mapping[str, SearchDim],
    defaults: Mapping[str, Any],
    n_trials: int,
    score: Callable[[dict[str, Any]], float | None],
) -> CoordinatePlan:
    """Replay coordinate descent over ``space`` with ``score(hparams)`` (``None`` = not run yet).

    Round 1 runs the baseline plus every 1-D grid sweep around it; each later round sweeps
    every key around the best configuration so far (configurations already run are not
    run again and do not count twice). When a round does not improve on its baseline, the
    baseline is a local optimum of the grid. Fantastic stops there; with trial budget left
    we halve the grid spacing around it (at most ``MAX_REFINEMENTS`` times) so that every
    optimizer spends the same number of trials. It stops when ``n_trials`` trials are spent.
    Ties go to the earlier trial; a missing score (diverged, failed) counts as +inf.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    baseline, grids = coordinate_grids(space, defaults)
    trials: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    scores: list[float | None] = []
    rounds: list[dict[str, Any]] = []
    level, candidates = 0, [baseline] + _round_candidates(space, grids, baseline, 0)
    while True:
        fresh = []
        for hparams in candidates:
            if config_id(hparams) not in seen and len(trials) + len(fresh) < n_trials:
                seen.add(config_id(hparams))
                fresh.append(hparams)
        first = len(trials)
        trials += fresh
        if fresh:
            rounds.append({"level": level, "baseline": dict(baseline), "trials": list(range(first, len(trials)))})
        known = [score(h) for h in fresh]
        pending = [first + i for i, value in enumerate(known) if value is None]
        if pending:
            return CoordinatePlan(trials, pending, False, rounds=rounds)
        scores += known
        best = select_best(scores)
        if len(trials) >= n_trials:
            return CoordinatePlan(trials, [], True, "budget", rounds)
        if best is not None and config_id(trials[best]) != config_id(baseline):
            baseline = dict(trials[best])  # the best run becomes the new baseline
        else:  # a local optimum at this spacing
            level += 1
            if level > MAX_REFINEMENTS:
                return CoordinatePlan(trials, [], True, "local optimum", rounds)
        candidates = _round_candidates(space, grids, baseline, level)
