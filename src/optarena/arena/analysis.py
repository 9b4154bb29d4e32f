"""Scores computed from stored runs after they end; nothing here trains.

Per (workload, scale) cell and optimizer: the best configuration by end-of-training eval
loss (never an intermediate checkpoint), its final loss over seeds with a 95% confidence
interval, the steps its curve needs to reach the tuned baseline's (AdamW's) final loss,
and the speedup this implies: baseline budget / steps-to-target (Kaddour et al. and
AlgoPerf count time-to-target; ARENA.md §1.4).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from optarena.arena.store import CurvePoint, ResultStore, RunRecord

__all__ = ["CellSummary", "OptimizerSummary", "confidence_interval", "steps_to_target", "summarize_study"]


@dataclass
class TrialPoint:
    """One tuning trial as the report shows it."""

    hparams: dict[str, Any]
    status: str
    final_eval_loss: float | None


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


@dataclass
class CellSummary:
    workload: str
    scale: str
    baseline: str
    steps: int
    target: float | None  # the baseline's mean final loss
    optimizers: list[OptimizerSummary] = field(default_factory=list)  # ranked, best first


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


def _summarize_optimizer(store: ResultStore, name: str, entries: list[tuple[str, int | None, RunRecord]]) -> OptimizerSummary:
    trials = sorted((e for e in entries if e[0] == "trial"), key=lambda e: (e[1] if e[1] is not None else -1))
    points = [TrialPoint(r.hparams, r.status, r.final_eval_loss) for _, _, r in trials]
    finished = [(i, r) for i, (_, _, r) in enumerate(trials) if r.status == "ok" and r.final_eval_loss is not None]
    if not finished:
        return OptimizerSummary(name, points, None, [], [])
    best_index, best = min(finished, key=lambda x: (x[1].final_eval_loss, x[0]))
    seeds = [best] + [r for role, _, r in entries if role == "seed" and r.hparams == best.hparams and r.id != best.id]
    good = [r for r in seeds if r.status == "ok" and r.final_eval_loss is not None]
    step_times = [
        (r.time_forward_backward + r.time_optimizer + r.time_data) / r.steps
        for r in good if r.time_forward_backward is not None and r.time_optimizer is not None and r.time_data is not None
    ]
    return OptimizerSummary(
        optimizer=name, trials=points, best_hparams=best.hparams,
        final_losses=[r.final_eval_loss for r in good], best_run_ids=[r.id for r in good],
        mean_time_per_step=statistics.fmean(step_times) if step_times else None,
    )


def summarize_study(store: ResultStore, study: str, baseline: str = "adamw") -> list[CellSummary]:
    """One :class:`CellSummary` per (workload, scale) of ``study``, optimizers ranked by mean final loss."""
    by_cell: dict[tuple[str, str], dict[str, list[tuple[str, int | None, RunRecord]]]] = {}
    for role, trial, run in store.study_runs(study):
        by_cell.setdefault((run.workload, run.scale), {}).setdefault(run.optimizer, []).append((role, trial, run))
    cells = []
    for (workload, scale), per_opt in by_cell.items():
        summaries = [_summarize_optimizer(store, name, entries) for name, entries in per_opt.items()]
        steps = max(r.steps for entries in per_opt.values() for _, _, r in entries)
        base = next((s for s in summaries if s.optimizer == baseline and s.final_losses), None)
        target = base.mean if base is not None else None
        if target is not None:
            for s in summaries:
                if s is base:  # by definition the baseline reaches its own final loss at its budget
                    s.steps_to_target, s.speedup = float(steps), 1.0
                    continue
                reached = [steps_to_target(store.curve(run_id), target) for run_id in s.best_run_ids]
                reached_steps = [x for x in reached if x is not None]
                if reached and len(reached_steps) * 2 >= len(reached):  # at least half the seeds reach it
                    s.steps_to_target = statistics.median(reached_steps)
                    s.speedup = steps / s.steps_to_target if s.steps_to_target > 0 else math.inf
        summaries.sort(key=lambda s: (s.mean, s.optimizer))
        cells.append(CellSummary(workload, scale, baseline, steps, target, summaries))
    return cells
