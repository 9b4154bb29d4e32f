"""Per-cell summaries computed from stored runs after they end; nothing here trains.

The cells of all optimizers that share (workload, scale, steps) form a *problem*
(:attr:`optarena.arena.store.Cell.problem`); :func:`summarize_study` gives one
:class:`ProblemSummary` per problem of a study, its optimizers ranked by mean final loss:

- the best configuration by end-of-training eval loss (never an intermediate checkpoint;
  Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them", arXiv:2509.02046),
  chosen by :func:`optarena.arena.search.select_best` as the tuner chose it, and its final
  loss over seeds with a 95% confidence interval;
- the mean over seeds of every other final metric the task records (accuracy, ...);
- the steps its curve needs to reach the tuned baseline's (AdamW's) final loss, and the
  speedup this implies: baseline budget / steps-to-target (AlgoPerf counts time-to-target;
  Dahl et al., arXiv:2306.07179);
- the learning-rate sensitivity of Wortsman et al. ("Small-scale proxies for large-scale
  Transformer training instabilities", arXiv:2309.14322): mean over the tuned learning rates
  of ``min(loss, l0) - l*``, computed by :func:`optarena.diagnostics.stability.lr_sensitivity`;
- the "approximately best" configurations (:func:`optarena.arena.search.approximately_best`).

Time is measured in steps (the trainer's unit; wall time on a shared CPU is noise).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from scipy import stats

from optarena.arena.search import approximately_best, select_best
from optarena.arena.store import CurvePoint, ResultStore, RunRecord
from optarena.diagnostics.stability import lr_sensitivity

__all__ = [
    "CurveReader",
    "OptimizerSummary",
    "ProblemSummary",
    "TrialPoint",
    "cached_reader",
    "confidence_interval",
    "extra_metrics",
    "lr_sensitivity_from_trials",
    "steps_to_target",
    "summarize_study",
    "time_to_target",
]

CurveReader = Callable[[int], list[CurvePoint]]


@dataclass
class TrialPoint:
    """One tuning trial as the report shows it."""

    hparams: dict[str, Any]
    status: str
    final_eval_loss: float | None
    run_id: int | None = None
    initial_eval_loss: float | None = None  # the eval loss at step 0 (l0 of the LR sensitivity)
    diverged_step: int | None = None
    error: str | None = None  # why a failed trial failed


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
    final_train_loss: float | None = None  # mean over the best runs
    wall_time: float | None = None  # seconds per best run, mean (evaluation included)
    eval_time: float | None = None  # seconds per best run spent evaluating, mean
    seed_runs: int = 0  # reruns of the best configuration on further seeds (beyond its trial)
    steps_per_run: int = 0
    lr_sensitivity: float | None = None
    lr_sensitivity_basis: str = ""  # which runs it averages over, or why there is none
    approx_best: list[TrialPoint] = field(default_factory=list)  # within the tolerance of the best trial, best first
    metrics: dict[str, float] = field(default_factory=dict)  # other final metrics of the best runs, mean over seeds
    note: str = ""  # what ran differs from the optimizer's own rule (e.g. no hidden matrix to apply it to)

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
        """Runs this optimizer was given on the problem (its cell): tuning trials plus seed reruns."""
        return len(self.trials) + self.seed_runs

    @property
    def budget_steps(self) -> int:
        """Training steps allotted to this optimizer on the problem (runs x steps; diverged runs stop early)."""
        return self.budget_runs * self.steps_per_run

    @property
    def initial_loss(self) -> float | None:
        """Median step-0 eval loss of the trials (the same init for every trial of one seed)."""
        values = [t.initial_eval_loss for t in self.trials if t.initial_eval_loss is not None]
        return statistics.median(values) if values else None


@dataclass
class ProblemSummary:
    """The optimizers' cells that share one (workload, scale, steps), ranked."""

    workload: str
    scale: str
    baseline: str
    steps: int
    target: float | None  # the baseline's mean final loss
    optimizers: list[OptimizerSummary] = field(default_factory=list)  # ranked, best first

    def get(self, optimizer: str) -> OptimizerSummary | None:
        return next((s for s in self.optimizers if s.optimizer == optimizer), None)

    @property
    def metric_names(self) -> list[str]:
        """The final metrics other than losses that any optimizer's best runs recorded, sorted."""
        return sorted({name for s in self.optimizers for name in s.metrics})


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


# -- per cell ------------------------------------------------------------------------------------

def cached_reader(store: ResultStore) -> CurveReader:
    """Read each run's curve from ``store`` once."""
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
    if usable and not any(t.status == "ok" and t.final_eval_loss is not None for t in usable):
        return None, "every trial diverged"  # no best loss to measure from: not "perfectly insensitive"
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


def extra_metrics(runs: Sequence[RunRecord]) -> dict[str, float]:
    """Mean over ``runs`` of each recorded final metric that is not a loss (accuracy, ...)."""
    values: dict[str, list[float]] = {}
    for r in runs:
        for name, value in r.metrics.items():
            if name != "loss" and not name.endswith("_loss") and value is not None and math.isfinite(value):
                values.setdefault(name, []).append(value)
    return {name: statistics.fmean(v) for name, v in sorted(values.items())}


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _loss(point: TrialPoint) -> float | None:
    return point.final_eval_loss if point.status == "ok" else None


def _summarize_optimizer(name: str, entries: list[tuple[str, int | None, RunRecord]], read: CurveReader
                         ) -> OptimizerSummary:
    trials = sorted((e for e in entries if e[0] == "trial"), key=lambda e: (e[1] if e[1] is not None else -1))
    points = [TrialPoint(r.hparams, r.status, r.final_eval_loss, r.id, _initial_eval_loss(read(r.id)),
                         r.diverged_step, r.error) for _, _, r in trials]
    steps = max(r.steps for _, _, r in entries)
    losses = [_loss(p) for p in points]
    chosen = select_best(losses)
    extra = sum(role == "seed" for role, _, _ in entries)
    if chosen is None:
        summary = OptimizerSummary(name, points, None, [], [], seed_runs=extra, steps_per_run=steps)
    else:
        best = trials[chosen][2]
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
            seed_runs=extra, steps_per_run=steps, metrics=extra_metrics(good),
            final_train_loss=_mean([r.final_train_loss for r in good]), wall_time=_mean([r.wall_time for r in good]),
            eval_time=_mean([r.time_eval for r in good]),
        )
    summary.lr_sensitivity, summary.lr_sensitivity_basis = lr_sensitivity_from_trials(points, summary.best_hparams)
    summary.approx_best = [points[i] for i in sorted(approximately_best(losses), key=lambda i: (losses[i], i))]
    return summary


def uses_matrix_rule(optimizer: str) -> bool:
    """Whether ``optimizer`` applies its rule to hidden matrices only, AdamW's to the rest (Muon's family, MKOR)."""
    from optarena.optim import get_spec

    try:
        spec = get_spec(optimizer)
    except ValueError:  # recorded by an install that knew it
        return False
    return spec.build_groups is not None and spec.family != "elementwise"


@functools.lru_cache(maxsize=None)
def has_hidden_matrix(workload: str, scale: str) -> bool:
    """Whether the workload's model has a hidden weight matrix (:func:`optarena.optim.partition_parameters`).

    The model is built on the meta device (no memory, no data); True when the workload is unknown.
    """
    import torch

    from optarena.arena.workloads import get_workload
    from optarena.optim import partition_parameters

    try:
        with torch.device("meta"):
            model = get_workload(workload).build(scale, 0).model
    except Exception:  # a workload that cannot be built on the meta device: build it for real
        try:
            model = get_workload(workload).build(scale, 0).model
        except ValueError:
            return True
    return bool(partition_parameters(model).hidden)


def time_to_target(summary: OptimizerSummary, target: float, read: CurveReader) -> float | None:
    """Median over the best configuration's seeds of its steps to ``target``; None unless half the seeds reach it."""
    reached = [steps_to_target(read(run_id), target) for run_id in summary.best_run_ids]
    hits = [x for x in reached if x is not None]
    if reached and len(hits) * 2 >= len(reached):
        return statistics.median(hits)
    return None


def _summarize(store: ResultStore, study: str, baseline: str, read: CurveReader) -> list[ProblemSummary]:
    by_problem: dict[tuple[str, str, int], dict[str, list[tuple[str, int | None, RunRecord]]]] = {}
    order: dict[tuple[str, str], int] = {}
    for role, trial, run in store.study_runs(study):
        cell = run.cell
        order.setdefault(cell.problem[:2], len(order))
        by_problem.setdefault(cell.problem, {}).setdefault(cell.optimizer, []).append((role, trial, run))
    problems = []
    for (workload, scale, steps) in sorted(by_problem, key=lambda c: (order[c[:2]], c[2])):
        per_opt = by_problem[(workload, scale, steps)]
        summaries = [_summarize_optimizer(name, entries, read) for name, entries in per_opt.items()]
        for s in summaries:
            if any(t.status != "failed" for t in s.trials) and uses_matrix_rule(s.optimizer) \
                    and not has_hidden_matrix(workload, scale):
                s.note = "no hidden matrix: ran its AdamW rule"
        base = next((s for s in summaries if s.optimizer == baseline and s.final_losses), None)
        target = base.mean if base is not None else None
        if target is not None:
            for s in summaries:
                if s is base:  # by definition the baseline reaches its own final loss at its budget
                    s.steps_to_target, s.speedup = float(steps), 1.0
                    continue
                s.steps_to_target = time_to_target(s, target, read)
                if s.steps_to_target is not None:
                    s.speedup = steps / s.steps_to_target if s.steps_to_target > 0 else math.inf
        summaries.sort(key=lambda s: (s.mean, s.optimizer))
        problems.append(ProblemSummary(workload, scale, baseline, steps, target, summaries))
    return problems


def summarize_study(store: ResultStore, study: str, baseline: str = "adamw", *,
                    read: CurveReader | None = None) -> list[ProblemSummary]:
    """One :class:`ProblemSummary` per (workload, scale, steps) of ``study``, optimizers ranked by mean final loss.

    Problems come in the order their workload and scale first appear, budgets ascending.
    """
    return _summarize(store, study, baseline, read or cached_reader(store))
