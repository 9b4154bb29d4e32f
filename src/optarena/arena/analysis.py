"""Scores computed from stored runs after they end; nothing here trains.

A *cell* is one (workload, scale, steps) of a study: the same workload and scale may appear
at several step budgets ("horizons"), and each budget is tuned and scored on its own.

Per cell and optimizer (:func:`summarize_study`):

- the best configuration by end-of-training eval loss (never an intermediate checkpoint;
  Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them", arXiv:2509.02046),
  its final loss over seeds with a 95% confidence interval;
- the steps its curve needs to reach the tuned baseline's (AdamW's) final loss, and the
  speedup this implies: baseline budget / steps-to-target (AlgoPerf counts time-to-target;
  ARENA.md §1.4);
- the learning-rate sensitivity of Wortsman et al. ("Small-scale proxies for large-scale
  Transformer training instabilities", arXiv:2309.14322): mean over the tuned learning rates
  of ``min(loss, l0) - l*``, computed by :func:`optarena.diagnostics.stability.lr_sensitivity`;
- the "approximately best" configurations: trials within 3e-3 of the best final loss
  (the Fantastic paper's ``grab_best_run(thshold=3e-3)``).

Across cells (:func:`score_study`):

- AlgoPerf's performance profile and benchmark score (Dahl et al., "Benchmarking Neural
  Network Training Algorithms", arXiv:2306.07179; ARENA.md §1.4): ratio ``r = t / min t``
  per problem, ``rho(tau)`` = share of problems with ``r <= tau``, and
  ``B = 1/(r_max - 1) * integral_1^r_max rho(tau) dtau`` with ``r_max = 4``; plus the
  geometric-mean speedup over problems;
- the Fantastic data-equivalent speedup (ARENA.md §2.3): fit the baseline's final loss over
  the budgets, ``L(D) = alpha * D^-B + beta``, and invert it for each optimizer's loss.

Deviations from the sources, on purpose:

- Time is measured in steps (the trainer's unit; wall time on a shared CPU is noise), and the
  time of an optimizer on a problem is the median over seeds of its *selected* (best by final
  loss) configuration, not AlgoPerf's median-over-studies of min-over-trials: we select by
  end-of-training loss, as the Fantastic protocol does, and score what we selected.
- Each problem (a cell) weighs ``1 / (number of budgets of its workload and scale)`` in the
  profile and the geometric mean, so running a workload at three horizons does not count it
  three times.
- A workload's own ``target(scale)`` is the loss a tuned AdamW reaches at the *default*
  budget, so it is used only for cells at that budget; other cells use the baseline's final
  loss at their budget.
- :func:`benchmark_score` integrates the step function ``rho`` exactly; AlgoPerf uses the
  trapezoid rule on 100 points (``grid=100`` reproduces that; the two differ by < 1%).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from optarena.arena.store import CurvePoint, ResultStore, RunRecord
from optarena.diagnostics.stability import lr_sensitivity

__all__ = [
    "APPROX_BEST_EPS",
    "R_MAX",
    "CellSummary",
    "DataEquivalentSpeedup",
    "OptimizerSummary",
    "Problem",
    "ProfileScores",
    "ScalingFit",
    "StudyScores",
    "TrialPoint",
    "approximately_best",
    "benchmark_score",
    "confidence_interval",
    "data_equivalent_speedups",
    "fit_data_scaling",
    "geometric_mean_speedup",
    "lr_sensitivity_from_trials",
    "performance_profile",
    "performance_ratios",
    "profile_scores",
    "score_study",
    "steps_to_target",
    "summarize_study",
]

R_MAX = 4.0  # AlgoPerf: a time more than 4x the best on a problem counts as never reaching the target
MIN_EXPONENT = 0.01  # below this the L(D) fit has no identifiable floor (see fit_data_scaling)
APPROX_BEST_EPS = 3e-3  # Fantastic: runs within 3e-3 of the best loss are "approximately best"

CurveReader = Callable[[int], list[CurvePoint]]


@dataclass
class TrialPoint:
    """One tuning trial as the report shows it."""

    hparams: dict[str, Any]
    status: str
    final_eval_loss: float | None
    run_id: int | None = None
    initial_eval_loss: float | None = None  # the eval loss at step 0 (l0 of the LR sensitivity)


@dataclass
class OptimizerSummary:
    optimizer: str
    trials: list[TrialPoint]
    best_hparams: dict[str, Any] | None
    final_losses: list[float]  # the best configuration's end-of-training eval loss, one per seed
    best_run_ids: list[int]
    steps_to_target: float | None = None
    speedup: float | None = None
    mean_time_per_step: float | None = None  # seconds, forward+backward+optimizer, best runs
    seed_runs: int = 0  # reruns of the best configuration on further seeds (beyond its trial)
    steps_per_run: int = 0
    lr_sensitivity: float | None = None
    lr_sensitivity_basis: str = ""  # which runs it averages over, or why there is none
    approx_best: list[TrialPoint] = field(default_factory=list)  # within APPROX_BEST_EPS of the best trial

    @property
    def mean(self) -> float:
        return statistics.fmean(self.final_losses) if self.final_losses else math.inf

    @property
    def ci95(self) -> float:
        return confidence_interval(self.final_losses)

    @property
    def n_diverged(self) -> int:
        return sum(t.status == "diverged" for t in self.trials)

    @property
    def n_failed(self) -> int:
        return sum(t.status == "failed" for t in self.trials)

    @property
    def budget_runs(self) -> int:
        """Runs this optimizer was given in the cell: tuning trials plus seed reruns."""
        return len(self.trials) + self.seed_runs

    @property
    def budget_steps(self) -> int:
        """Training steps allotted to this optimizer in the cell (runs x steps; diverged runs stop early)."""
        return self.budget_runs * self.steps_per_run

    @property
    def initial_loss(self) -> float | None:
        """Median step-0 eval loss of the trials (the same init for every trial of one seed)."""
        values = [t.initial_eval_loss for t in self.trials if t.initial_eval_loss is not None]
        return statistics.median(values) if values else None


@dataclass
class CellSummary:
    workload: str
    scale: str
    baseline: str
    steps: int
    target: float | None  # the baseline's mean final loss
    optimizers: list[OptimizerSummary] = field(default_factory=list)  # ranked, best first

    def get(self, optimizer: str) -> OptimizerSummary | None:
        return next((s for s in self.optimizers if s.optimizer == optimizer), None)


def confidence_interval(values: list[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean (0 for one value, nan for none)."""
    n = len(values)
    if n == 0:
        return math.nan
    if n == 1:
        return 0.0
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n))


def steps_to_target(curve: list[CurvePoint], target: float) -> float | None:
    """First step at which the eval curve reaches ``target``, linearly interpolated between evaluations."""
    points = [(p.step, p.eval_loss) for p in curve if p.eval_loss is not None]
    for (s0, l0), (s1, l1) in zip(points, points[1:]):
        if l1 <= target:
            if l0 <= target or l0 == l1:
                return float(s1 if l0 > target else s0)
            return s0 + (l0 - target) / (l0 - l1) * (s1 - s0)
    return None


def approximately_best(trials: Sequence[TrialPoint], eps: float = APPROX_BEST_EPS) -> list[TrialPoint]:
    """Finished trials whose final loss is within ``eps`` of the best one, best first."""
    if not (eps >= 0):
        raise ValueError(f"eps must be >= 0, got eps={eps!r}")
    ok = [t for t in trials if t.status == "ok" and t.final_eval_loss is not None]
    if not ok:
        return []
    best = min(t.final_eval_loss for t in ok)
    close = [t for t in ok if t.final_eval_loss <= best + eps]
    return sorted(close, key=lambda t: t.final_eval_loss)


# -- per cell ------------------------------------------------------------------------------------

def _cached_reader(store: ResultStore) -> CurveReader:
    cache: dict[int, list[CurvePoint]] = {}

    def read(run_id: int) -> list[CurvePoint]:
        if run_id not in cache:
            cache[run_id] = store.curve(run_id)
        return cache[run_id]

    return read


def _initial_eval_loss(curve: list[CurvePoint]) -> float | None:
    first = curve[0] if curve else None
    return first.eval_loss if first is not None and first.step == 0 else None


def lr_sensitivity_from_trials(trials: Sequence[TrialPoint], best_hparams: Mapping[str, Any] | None = None,
                               initial_loss: float | None = None) -> tuple[float | None, str]:
    """Wortsman et al.'s LR sensitivity over one optimizer's tuning trials, and which trials it used.

    ``E_lr[min(loss(lr), l0) - l*]`` (:func:`optarena.diagnostics.stability.lr_sensitivity`),
    with ``l0`` = ``initial_loss`` or else the median step-0 eval loss of the trials.

    Their sweep varies only the learning rate. A random search varies everything, so when at
    least 3 trials differ from the best configuration in ``lr`` alone (the coordinate protocol's
    lr ablation) we use those; otherwise all trials, and the basis says so. Diverged trials count
    as l0; failed ones (harness errors, not optimizer behaviour) are left out. Returns
    ``(None, reason)`` when it cannot be computed.
    """
    if initial_loss is None:
        values = [t.initial_eval_loss for t in trials if t.initial_eval_loss is not None]
        initial_loss = statistics.median(values) if values else None
    if initial_loss is None or not math.isfinite(initial_loss):
        return None, "no step-0 evaluation stored"
    usable = [t for t in trials if t.status in ("ok", "diverged") and "lr" in t.hparams
              and isinstance(t.hparams["lr"], (int, float)) and t.hparams["lr"] > 0]
    if len({t.hparams["lr"] for t in usable}) < 2:
        return None, "fewer than 2 learning rates tried"
    basis = f"all {len(usable)} trials (other hyperparameters vary too)"
    if best_hparams is not None:
        rest = {k: v for k, v in best_hparams.items() if k != "lr"}
        sweep = [t for t in usable if {k: v for k, v in t.hparams.items() if k != "lr"} == rest]
        if len({t.hparams["lr"] for t in sweep}) >= 3:
            usable, basis = sweep, f"lr sweep of {len(sweep)} runs around the best configuration"
    points = [(float(t.hparams["lr"]), t.final_eval_loss if t.final_eval_loss is not None else math.inf)
              for t in usable]
    return lr_sensitivity(points, initial_loss), basis


def _summarize_optimizer(name: str, entries: list[tuple[str, int | None, RunRecord]], read: CurveReader,
                         eps: float) -> OptimizerSummary:
    trials = sorted((e for e in entries if e[0] == "trial"), key=lambda e: (e[1] if e[1] is not None else -1))
    points = [TrialPoint(r.hparams, r.status, r.final_eval_loss, r.id, _initial_eval_loss(read(r.id)))
              for _, _, r in trials]
    steps = max(r.steps for _, _, r in entries)
    finished = [(i, r) for i, (_, _, r) in enumerate(trials) if r.status == "ok" and r.final_eval_loss is not None]
    extra = sum(role == "seed" for role, _, _ in entries)
    if not finished:
        summary = OptimizerSummary(name, points, None, [], [], seed_runs=extra, steps_per_run=steps)
    else:
        _, best = min(finished, key=lambda x: (x[1].final_eval_loss, x[0]))
        seeds = [best] + [r for role, _, r in entries
                          if role == "seed" and r.hparams == best.hparams and r.id != best.id]
        good = [r for r in seeds if r.status == "ok" and r.final_eval_loss is not None]
        step_times = [
            (r.time_forward_backward + r.time_optimizer + r.time_data) / r.steps
            for r in good if r.time_forward_backward is not None and r.time_optimizer is not None
            and r.time_data is not None
        ]
        summary = OptimizerSummary(
            optimizer=name, trials=points, best_hparams=best.hparams,
            final_losses=[r.final_eval_loss for r in good], best_run_ids=[r.id for r in good],
            mean_time_per_step=statistics.fmean(step_times) if step_times else None,
            seed_runs=extra, steps_per_run=steps,
        )
    summary.lr_sensitivity, summary.lr_sensitivity_basis = lr_sensitivity_from_trials(points, summary.best_hparams)
    summary.approx_best = approximately_best(points, eps)
    return summary


def _time_to_target(summary: OptimizerSummary, target: float, read: CurveReader) -> float | None:
    """Median over the best configuration's seeds of its steps to ``target``; None unless half the seeds reach it."""
    reached = [steps_to_target(read(run_id), target) for run_id in summary.best_run_ids]
    hits = [x for x in reached if x is not None]
    if reached and len(hits) * 2 >= len(reached):
        return statistics.median(hits)
    return None


def _summarize(store: ResultStore, study: str, baseline: str, read: CurveReader, eps: float) -> list[CellSummary]:
    by_cell: dict[tuple[str, str, int], dict[str, list[tuple[str, int | None, RunRecord]]]] = {}
    order: dict[tuple[str, str], int] = {}
    for role, trial, run in store.study_runs(study):
        order.setdefault((run.workload, run.scale), len(order))
        by_cell.setdefault((run.workload, run.scale, run.steps), {}).setdefault(run.optimizer, []).append(
            (role, trial, run))
    cells = []
    for (workload, scale, steps) in sorted(by_cell, key=lambda c: (order[c[:2]], c[2])):
        per_opt = by_cell[(workload, scale, steps)]
        summaries = [_summarize_optimizer(name, entries, read, eps) for name, entries in per_opt.items()]
        base = next((s for s in summaries if s.optimizer == baseline and s.final_losses), None)
        target = base.mean if base is not None else None
        if target is not None:
            for s in summaries:
                if s is base:  # by definition the baseline reaches its own final loss at its budget
                    s.steps_to_target, s.speedup = float(steps), 1.0
                    continue
                s.steps_to_target = _time_to_target(s, target, read)
                if s.steps_to_target is not None:
                    s.speedup = steps / s.steps_to_target if s.steps_to_target > 0 else math.inf
        summaries.sort(key=lambda s: (s.mean, s.optimizer))
        cells.append(CellSummary(workload, scale, baseline, steps, target, summaries))
    return cells


def summarize_study(store: ResultStore, study: str, baseline: str = "adamw", *,
                    eps: float = APPROX_BEST_EPS) -> list[CellSummary]:
    """One :class:`CellSummary` per (workload, scale, steps) of ``study``, optimizers ranked by mean final loss.

    Cells come in the order their workload and scale first appear, budgets ascending.
    """
    return _summarize(store, study, baseline, _cached_reader(store), eps)


# -- performance profiles (AlgoPerf) ---------------------------------------------------------------

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
    """One cell as a problem of the performance profile."""

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

    def rho(self, optimizer: str, tau: float) -> float:
        return performance_profile({optimizer: self.ratios[optimizer]}, [tau],
                                   [p.weight for p in self.problems])[optimizer][0]

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


def profile_scores(cells: Sequence[CellSummary], read: CurveReader, baseline: str = "adamw",
                   r_max: float = R_MAX) -> ProfileScores:
    """Time each optimizer to each cell's target and score the study as AlgoPerf does (see module doc)."""
    names = sorted({s.optimizer for c in cells for s in c.optimizers})
    budgets_per = {}
    for c in cells:
        budgets_per.setdefault((c.workload, c.scale), set()).add(c.steps)
    problems, skipped = [], []
    for c in cells:
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
                t = s.steps_to_target if source == "baseline" else _time_to_target(s, target, read)
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


# -- data-equivalent speedup (Fantastic) -----------------------------------------------------------

def _power_law(d: np.ndarray, alpha: float, exponent: float, beta: float) -> np.ndarray:
    return alpha * np.power(d, -exponent) + beta


@dataclass
class ScalingFit:
    """``L(D) = alpha * D^-exponent + beta`` fitted to a baseline's final losses over budgets."""

    alpha: float
    exponent: float
    beta: float
    budgets: list[float]
    losses: list[float]

    def loss(self, budget: float) -> float:
        return float(_power_law(np.asarray(budget, dtype=float), self.alpha, self.exponent, self.beta))

    def effective_data(self, loss: float) -> float:
        """``D_eff = ((L - beta) / alpha)^(-1/exponent)``: the budget the baseline needs to reach ``loss``.

        ``inf`` at or below the fitted floor ``beta`` (the baseline never gets there).
        """
        if loss <= self.beta:
            return math.inf
        return float(((loss - self.beta) / self.alpha) ** (-1.0 / self.exponent))

    def speedup(self, loss: float, budget: float) -> float:
        """``D_eff / D``: how many times more data the baseline needs to match ``loss`` reached at ``budget``."""
        return self.effective_data(loss) / budget


def fit_data_scaling(budgets: Sequence[float], losses: Sequence[float]) -> ScalingFit:
    """Fit ``L(D) = alpha * D^-B + beta`` as the Fantastic paper's ``speedup_estimation.py`` does.

    ``scipy.optimize.curve_fit`` from ``p0 = [L_first - L_last, 0.5, L_last]`` (budgets sorted
    ascending). Raises ``ValueError`` saying why when there are fewer than 3 distinct budgets,
    non-finite losses, the fit does not give a decreasing law (alpha > 0, B > 0) to invert, or
    the fit is degenerate (B < 0.01, or beta more than 10 loss spreads below the lowest loss:
    losses that keep falling as fast at every budget identify no floor). The last check is ours;
    the Fantastic code trusts every fit.
    """
    pairs = sorted(zip((float(b) for b in budgets), (float(x) for x in losses)))
    if len(pairs) != len(budgets) or len(budgets) != len(losses):
        raise ValueError(f"need one loss per budget, got {len(budgets)} budgets and {len(losses)} losses")
    d = np.array([b for b, _ in pairs])
    y = np.array([x for _, x in pairs])
    if len(np.unique(d)) < 3:
        raise ValueError(f"the fit L(D) = alpha*D^-B + beta has 3 parameters and needs at least 3 distinct budgets, "
                         f"got {len(np.unique(d))} ({sorted(set(d.tolist()))})")
    if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(np.isfinite(y))):
        raise ValueError(f"budgets must be > 0 and losses finite, got budgets={d.tolist()}, losses={y.tolist()}")
    p0 = [y[0] - y[-1], 0.5, y[-1]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_power_law, d, y, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the fit L(D) = alpha*D^-B + beta did not converge on losses {y.tolist()}: {err}") from None
    alpha, exponent, beta = (float(p) for p in params)
    if not (math.isfinite(alpha) and math.isfinite(exponent) and math.isfinite(beta) and alpha > 0 and exponent > 0):
        raise ValueError(f"the fitted law is not decreasing in D (alpha={alpha:.4g}, B={exponent:.4g}), so it cannot "
                         f"be inverted; losses over budgets {d.tolist()} were {y.tolist()}")
    spread = float(y.max() - y.min())
    if exponent < MIN_EXPONENT or beta < y.min() - 10 * spread:
        # Losses that do not flatten with the budget drive the fit to B -> 0, alpha -> inf, beta -> -inf:
        # a logarithm in disguise whose floor (and hence any D_eff beyond the data) is not identified.
        raise ValueError(f"the losses {[round(v, 4) for v in y.tolist()]} do not flatten with the budget, so the "
                         f"fit is degenerate (B={exponent:.3g}, beta={beta:.4g}); train longer budgets before "
                         f"reading a data-equivalent speedup")
    return ScalingFit(alpha, exponent, beta, d.tolist(), y.tolist())


@dataclass
class DataEquivalentSpeedup:
    """Per (workload, scale): the baseline's L(D) fit and each optimizer's D_eff / D at each budget."""

    workload: str
    scale: str
    baseline: str
    budgets: list[int]  # steps, ascending (the baseline's finished budgets)
    unit: int  # D = steps / unit (the smallest budget); the speedup does not depend on the unit
    fit: ScalingFit | None
    reason: str | None  # why there is no fit
    losses: dict[str, dict[int, float]] = field(default_factory=dict)  # optimizer -> steps -> mean final loss
    speedups: dict[str, dict[int, float]] = field(default_factory=dict)  # optimizer -> steps -> D_eff / D


def data_equivalent_speedups(cells: Sequence[CellSummary], baseline: str = "adamw") -> list[DataEquivalentSpeedup]:
    """The Fantastic data-equivalent speedup for every (workload, scale) of ``cells`` (ARENA.md §2.3).

    Each budget's losses are those of the configuration tuned at that budget (mean over seeds).
    With fewer than 3 budgets, or a fit that cannot be inverted, ``fit`` is None and ``reason``
    says why; no speedup is guessed.
    """
    groups: dict[tuple[str, str], list[CellSummary]] = {}
    for c in cells:
        groups.setdefault((c.workload, c.scale), []).append(c)
    out = []
    for (workload, scale), group in groups.items():
        group = sorted(group, key=lambda c: c.steps)
        losses: dict[str, dict[int, float]] = {}
        for c in group:
            for s in c.optimizers:
                if s.final_losses:
                    losses.setdefault(s.optimizer, {})[c.steps] = s.mean
        base = losses.get(baseline, {})
        budgets = sorted(base)
        unit = budgets[0] if budgets else (group[0].steps if group else 1)
        fit, reason = None, None
        if not budgets:
            reason = f"no finished {baseline} run"
        else:
            try:
                fit = fit_data_scaling([b / unit for b in budgets], [base[b] for b in budgets])
            except ValueError as err:
                reason = f"{len(budgets)} budget(s) of {baseline} ({', '.join(map(str, budgets))} steps): {err}"
        speedups: dict[str, dict[int, float]] = {}
        if fit is not None:
            for name, per_budget in losses.items():
                speedups[name] = {b: fit.speedup(loss, b / unit) for b, loss in per_budget.items()}
        out.append(DataEquivalentSpeedup(workload, scale, baseline, budgets, unit, fit, reason, losses, speedups))
    return out


# -- everything for one study ----------------------------------------------------------------------

@dataclass
class StudyScores:
    """All scores of one study, and the settings (tuning budget) they were obtained under."""

    study: str
    baseline: str
    settings: dict[str, Any]
    cells: list[CellSummary]
    profile: ProfileScores
    data_speedups: list[DataEquivalentSpeedup]

    def budget(self, optimizer: str) -> tuple[int, int]:
        """(runs, allotted steps) this optimizer was given over the whole study."""
        summaries = [s for c in self.cells for s in c.optimizers if s.optimizer == optimizer]
        return sum(s.budget_runs for s in summaries), sum(s.budget_steps for s in summaries)


def score_study(store: ResultStore, study: str, baseline: str | None = None, *, r_max: float = R_MAX,
                eps: float = APPROX_BEST_EPS) -> StudyScores:
    """Every score of ``study`` from the store (``baseline`` defaults to the study's own setting, else adamw)."""
    settings = dict(store.studies()).get(study, {})
    baseline = baseline or settings.get("baseline") or "adamw"
    read = _cached_reader(store)
    cells = _summarize(store, study, baseline, read, eps)
    return StudyScores(study, baseline, settings, cells, profile_scores(cells, read, baseline, r_max),
                       data_equivalent_speedups(cells, baseline))
