"""Scores across a study's problems: AlgoPerf's performance profiles, benchmark score and speedups.

- AlgoPerf's performance profile and benchmark score (Dahl et al., "Benchmarking Neural
  Network Training Algorithms", arXiv:2306.07179): ratio ``r = t / min t`` per problem,
  ``rho(tau)`` = share of problems with ``r <= tau``, and
  ``B = 1/(r_max - 1) * integral_1^r_max rho(tau) dtau`` with ``r_max = 4``; plus the
  geometric-mean speedup over problems;
- the data-equivalent speedup of Wen et al. (arXiv:2509.02046), from
  :mod:`optarena.scaling.data_scaling`.

:func:`score_study` computes all of them, with the per-problem summaries
(:func:`optarena.arena.summaries.summarize_study`), as one :class:`StudyScores`.

Deviations from the sources, on purpose:

- The time of an optimizer on a problem is the median over seeds of its *selected* (best by
  final loss) configuration, not AlgoPerf's median-over-studies of min-over-trials: we select
  by end-of-training loss, as the Fantastic protocol does, and score what we selected.
- Each problem weighs ``1 / (number of budgets of its workload and scale)`` in the profile and
  the geometric mean, so running a workload at three horizons does not count it three times.
- A workload's own ``target(scale)`` is the loss a tuned AdamW reaches at the *default*
  budget, so it is used only for problems at that budget; other problems use the baseline's
  final loss at their budget.
- :func:`benchmark_score` integrates the step function ``rho`` exactly; AlgoPerf uses the
  trapezoid rule on 100 points (``grid=100`` reproduces that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from optarena.arena.store import ResultStore
from optarena.arena.summaries import CurveReader, ProblemSummary, cached_reader, summarize_study, time_to_target
from optarena.scaling.data_scaling import DataEquivalentSpeedup, data_equivalent_speedups

__all__ = [
    "R_MAX",
    "Problem",
    "ProfileScores",
    "StudyScores",
    "benchmark_score",
    "final_losses",
    "geometric_mean_speedup",
    "performance_profile",
    "performance_ratios",
    "profile_scores",
    "score_study",
]

R_MAX = 4.0  # AlgoPerf: a time more than 4x the best on a problem counts as never reaching the target


def _check_times(times: Mapping[str, Sequence[float]]) -> int:
    lengths = {len(v) for v in times.values()}
    if len(lengths) > 1:
        raise ValueError(f"every optimizer needs one time per problem, got lengths {sorted(lengths)}")
    for name, row in times.items():
        for t in row:
            if not (t >= 0):  # also rejects nan
                raise ValueError(f"times must be >= 0 (math.inf: never reached), got {t!r} for {name!r}")
    return lengths.pop() if lengths else 0


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n or any(not (w > 0) or not math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be {n} finite numbers > 0, got {list(weights)!r}")
    return [float(w) for w in weights]


def performance_ratios(times: Mapping[str, Sequence[float]], r_max: float = R_MAX) -> dict[str, list[float]]:
    """AlgoPerf's performance ratios ``r[s][w] = t[s][w] / min_s t[s][w]``.

    ``times[optimizer][problem]`` is the time (here: steps) to the problem's target, ``math.inf``
    when never reached. A ratio above ``r_max``, or on a problem nobody solved, is ``math.inf``.
    A time of 0 (the target was met at initialisation) gives ratio 1, and the others ``inf``.
    """
    if not (r_max > 1):
        raise ValueError(f"r_max must be > 1, got r_max={r_max!r}")
    n = _check_times(times)
    out: dict[str, list[float]] = {name: [] for name in times}
    for w in range(n):
        best = min(row[w] for row in times.values())
        for name, row in times.items():
            t = row[w]
            if math.isinf(best):
                r = math.inf
            elif best == 0:
                r = 1.0 if t == 0 else math.inf
            else:
                r = t / best
            out[name].append(r if r <= r_max else math.inf)
    return out


def performance_profile(ratios: Mapping[str, Sequence[float]], taus: Sequence[float],
                        weights: Sequence[float] | None = None) -> dict[str, list[float]]:
    """``rho_s(tau)``: the (weighted) share of problems with ratio ``<= tau``, at each ``tau``."""
    out = {}
    for name, row in ratios.items():
        w = _weights(weights, len(row))
        total = sum(w)
        out[name] = [sum(wi for r, wi in zip(row, w) if r <= tau) / total if total else 0.0 for tau in taus]
    return out


def benchmark_score(ratios: Mapping[str, Sequence[float]], r_max: float = R_MAX,
                    weights: Sequence[float] | None = None, grid: int | None = None) -> dict[str, float]:
    """AlgoPerf's benchmark score ``B_s = 1/(r_max-1) * integral_1^r_max rho_s(tau) dtau``, in [0, 1].

    Exact for the step function ``rho`` by default: each problem adds
    ``w * (r_max - r) / (r_max - 1)`` for a ratio ``r <= r_max``. ``grid=100`` applies
    AlgoPerf's trapezoid rule on 100 evenly spaced ``tau`` instead.
    """
    if not (r_max > 1):
        raise ValueError(f"r_max must be > 1, got r_max={r_max!r}")
    out = {}
    for name, row in ratios.items():
        w = _weights(weights, len(row))
        total = sum(w)
        if not total:
            out[name] = 0.0
            continue
        if grid is None:
            area = sum(wi * max(0.0, r_max - max(r, 1.0)) for r, wi in zip(row, w) if r <= r_max)
            out[name] = area / total / (r_max - 1)
        else:
            if grid < 2:
                raise ValueError(f"grid must be >= 2 points, got grid={grid!r}")
            taus = np.linspace(1.0, r_max, grid)
            rho = np.array(performance_profile({name: row}, taus, w)[name])
            out[name] = float(np.sum((rho[1:] + rho[:-1]) / 2 * np.diff(taus)) / (r_max - 1))
    return out


def geometric_mean_speedup(times: Mapping[str, Sequence[float]], baseline: str, budgets: Sequence[float],
                           weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted geometric mean over problems of ``t[baseline] / t[s]``.

    As AlgoPerf's ``compute_speedups.py``, a time of ``inf`` is replaced by the problem's budget
    plus one unit (here: one step), so never reaching the target is a finite, large loss.
    """
    n = _check_times(times)
    if baseline not in times:
        raise ValueError(f"baseline {baseline!r} has no times; optimizers: {sorted(times)}")
    if len(budgets) != n:
        raise ValueError(f"need one budget per problem ({n}), got {len(budgets)}")
    w = _weights(weights, n)

    def finite(t: float, budget: float) -> float:
        return max(budget + 1.0 if math.isinf(t) else t, 1e-12)

    ref = [finite(t, b) for t, b in zip(times[baseline], budgets)]
    out = {}
    for name, row in times.items():
        logs = [wi * math.log(r / finite(t, b)) for t, r, b, wi in zip(row, ref, budgets, w)]
        out[name] = math.exp(sum(logs) / sum(w)) if n else math.nan
    return out


@dataclass
class Problem:
    """One (workload, scale, steps) as a problem of the performance profile."""

    workload: str
    scale: str
    steps: int
    target: float
    target_source: str  # "workload" (its target(scale) at the default budget) or "baseline" (final loss)
    weight: float
    times: dict[str, float]  # steps to target per optimizer; inf = not reached


@dataclass
class ProfileScores:
    """Performance profiles, benchmark scores and geometric-mean speedups over a study's problems."""

    baseline: str
    r_max: float
    problems: list[Problem]
    ratios: dict[str, list[float]]
    scores: dict[str, float]  # benchmark score B_s in [0, 1]
    geomean_speedup: dict[str, float]  # vs the baseline
    skipped: list[str] = field(default_factory=list)  # problems left out, with the reason

    def solved(self, optimizer: str) -> int:
        """Problems where ``optimizer`` reached the target within ``r_max`` times the best."""
        return sum(math.isfinite(r) for r in self.ratios[optimizer])


def _workload_target(workload: str, scale: str, steps: int) -> float | None:
    try:
        from optarena.arena.workloads import get_workload

        spec = get_workload(workload)
        if spec.default_steps(scale) != steps:
            return None
        target = spec.target(scale)
    except (ValueError, KeyError):  # a workload this install does not know: fall back to the baseline
        return None
    return float(target) if target is not None and math.isfinite(target) else None


def profile_scores(summaries: Sequence[ProblemSummary], read: CurveReader, baseline: str = "adamw",
                   r_max: float = R_MAX) -> ProfileScores:
    """Time each optimizer to each problem's target and score the study as AlgoPerf does (see module doc)."""
    names = sorted({s.optimizer for c in summaries for s in c.optimizers})
    budgets_per = {}
    for c in summaries:
        budgets_per.setdefault((c.workload, c.scale), set()).add(c.steps)
    problems, skipped = [], []
    for c in summaries:
        target, source = _workload_target(c.workload, c.scale, c.steps), "workload"
        if target is None:
            target, source = c.target, "baseline"
        if target is None:
            skipped.append(f"{c.workload}/{c.scale}/{c.steps}: no workload target and no finished {baseline} run")
            continue
        times = {}
        for name in names:
            s = c.get(name)
            if s is None or not s.final_losses:
                times[name] = math.inf
            elif source == "baseline" and name == baseline:
                times[name] = float(c.steps)  # it reaches its own mean final loss at its budget, by definition
            else:
                t = s.steps_to_target if source == "baseline" else time_to_target(s, target, read)
                times[name] = math.inf if t is None else float(t)
        weight = 1.0 / len(budgets_per[(c.workload, c.scale)])
        problems.append(Problem(c.workload, c.scale, c.steps, target, source, weight, times))
    table = {name: [p.times[name] for p in problems] for name in names}
    weights = [p.weight for p in problems]
    ratios = performance_ratios(table, r_max)
    scores = benchmark_score(ratios, r_max, weights) if problems else {name: 0.0 for name in names}
    geomean = (geometric_mean_speedup(table, baseline, [p.steps for p in problems], weights)
               if problems and baseline in table else {})
    return ProfileScores(baseline, r_max, problems, ratios, scores, geomean, skipped)


def final_losses(summaries: Sequence[ProblemSummary]) -> dict[tuple[str, str], dict[str, dict[int, float]]]:
    """``[(workload, scale)][optimizer][steps]``: the mean final loss of each configuration tuned at each budget."""
    out: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for c in summaries:
        group = out.setdefault((c.workload, c.scale), {})
        for s in c.optimizers:
            if s.final_losses:
                group.setdefault(s.optimizer, {})[c.steps] = s.mean
    return out


@dataclass
class StudyScores:
    """All scores of one study, and the settings (tuning budget) they were obtained under."""

    study: str
    baseline: str
    settings: dict[str, Any]
    problems: list[ProblemSummary]
    profile: ProfileScores
    data_speedups: list[DataEquivalentSpeedup]

    def budget(self, optimizer: str) -> tuple[int, int]:
        """(runs, allotted steps) this optimizer was given over the whole study."""
        summaries = [s for c in self.problems for s in c.optimizers if s.optimizer == optimizer]
        return sum(s.budget_runs for s in summaries), sum(s.budget_steps for s in summaries)


def score_study(store: ResultStore, study: str, baseline: str | None = None, *, r_max: float = R_MAX) -> StudyScores:
    """Every score of ``study`` from the store (``baseline`` defaults to the study's own setting, else adamw)."""
    settings = dict(store.studies()).get(study, {})
    baseline = baseline or settings.get("baseline") or "adamw"
    read = cached_reader(store)
    summaries = summarize_study(store, study, baseline, read=read)
    return StudyScores(study, baseline, settings, summaries, profile_scores(summaries, read, baseline, r_max),
                       data_equivalent_speedups(final_losses(summaries), baseline))
