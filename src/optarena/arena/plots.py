"""The report's figures: loss curves, loss against learning rate, performance profiles, budget and scale.

Per problem, the loss curves of each optimizer's best configuration (band: min–max over seeds)
and the final loss against the learning rate of every trial; the training signals of each best
configuration's first seed (train loss against wall-clock time, gradient norm and, where the model
records them, the stability proxies against tokens seen); across the study, the performance
profiles, final loss and speedup against the budget (per workload and scale with several
budgets) and speedup against scale (per workload with several scales).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optarena.arena.scores import StudyScores, performance_profile  # noqa: E402
from optarena.arena.store import ResultStore  # noqa: E402
from optarena.arena.summaries import ProblemSummary  # noqa: E402
from optarena.scaling.data_scaling import DataEquivalentSpeedup  # noqa: E402

__all__ = ["plot_budget", "plot_curves", "plot_lr", "plot_profiles", "plot_scale", "plot_training", "scale_order"]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(store: ResultStore, problem: ProblemSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in problem.optimizers:
        curves = [store.curve(run_id) for run_id in s.best_run_ids]
        if not curves:
            continue
        steps = [p.step for p in curves[0] if p.eval_loss is not None]
        series = [[p.eval_loss for p in c if p.eval_loss is not None] for c in curves]
        n = min(len(x) for x in series)
        steps = steps[:n]
        cols = list(zip(*(x[:n] for x in series)))
        mean = [sum(c) / len(c) for c in cols]
        line, = ax.plot(steps, mean, label=f"{s.optimizer} ({len(series)} seeds)")
        if len(series) > 1:
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], alpha=0.2,
                            color=line.get_color())
    if problem.target is not None:
        ax.axhline(problem.target, color="gray", ls=":", lw=1, label=f"{problem.baseline} final loss")
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss")
    ax.set_title(f"{problem.workload}/{problem.scale}, {problem.steps} steps: best configuration per optimizer\n"
                 "(line: mean over seeds; band: min–max over seeds)", fontsize=10)
    finite = [v for s in problem.optimizers for v in s.final_losses]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3) - 0.02 * abs(lo), None)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


# The curve's training signals: (field, y label, x field, x label); panels without data are left out.
TRAINING_PANELS = (
    ("train_loss", "train loss", "wall_time", "wall-clock seconds"),
    ("grad_norm", "gradient norm (before clipping)", "tokens", "tokens seen"),
    ("max_attn_logit", "max attention logit", "tokens", "tokens seen"),
    ("logit_rms", "output-logit RMS", "tokens", "tokens seen"),
)


def plot_training(store: ResultStore, problem: ProblemSummary, path: Path) -> bool:
    """Each optimizer's best run (first seed) over training; False (no file) when no run has a curve."""
    curves = {s.optimizer: store.curve(s.best_run_ids[0]) for s in problem.optimizers if s.best_run_ids}
    panels = [panel for panel in TRAINING_PANELS
              if any(getattr(p, panel[0]) is not None for curve in curves.values() for p in curve)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (field, label, x_field, x_label) in zip(axes[0], panels):
        for optimizer, curve in curves.items():
            points = [(getattr(p, x_field), getattr(p, field)) for p in curve
                      if getattr(p, field) is not None and getattr(p, x_field) is not None]
            if points:
                ax.plot(*zip(*points), label=optimizer, lw=1)
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if x_field == "tokens":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{problem.workload}/{problem.scale}, {problem.steps} steps: best configuration per optimizer "
                 "(first seed)", fontsize=10)
    _save(fig, path)
    return True


def plot_lr(problem: ProblemSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [t.final_eval_loss for s in problem.optimizers for t in s.trials if t.final_eval_loss is not None
              and t.status == "ok"]
    ceiling = max(finite) * 1.05 if finite else 1.0
    for s in problem.optimizers:
        ok = sorted((t.hparams["lr"], t.final_eval_loss) for t in s.trials
                    if t.status == "ok" and t.final_eval_loss is not None and "lr" in t.hparams)
        bad = [t.hparams["lr"] for t in s.trials if t.status != "ok" and "lr" in t.hparams]
        label = s.optimizer + (f" (sensitivity {s.lr_sensitivity:.3g})" if s.lr_sensitivity is not None else "")
        line, = ax.plot([x for x, _ in ok], [y for _, y in ok], "o-", label=label, ms=4)
        if bad:
            ax.plot(bad, [ceiling] * len(bad), "x", color=line.get_color(), ms=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (tuned trials; x = diverged or failed)")
    ax.set_ylabel("final eval loss")
    ax.set_title(f"{problem.workload}/{problem.scale}, {problem.steps} steps: final loss against learning rate",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_profiles(scores: StudyScores, path: Path) -> None:
    profile = scores.profile
    taus = np.linspace(1.0, profile.r_max, 400)
    rho = performance_profile(profile.ratios, taus, [p.weight for p in profile.problems])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ranked = sorted(rho, key=lambda n: (-profile.scores[n], n))
    for i, name in enumerate(ranked):
        ax.plot(taus, np.array(rho[name]) - 0.006 * i, drawstyle="steps-post", lw=1.8,
                label=f"{name} (B = {profile.scores[name]:.3f})")
    ax.set_xlim(1.0, profile.r_max)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("τ: steps to target / fewest steps any optimizer needed on that problem")
    ax.set_ylabel("ρ(τ): share of problems solved within τ")
    ax.set_title(f"Performance profiles over {len(profile.problems)} problems "
                 f"(AlgoPerf; B = area / (r_max − 1), r_max = {profile.r_max:g})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_budget(scores: StudyScores, data: DataEquivalentSpeedup, path: Path) -> None:
    problems = sorted((c for c in scores.problems if (c.workload, c.scale) == (data.workload, data.scale)),
                   key=lambda c: c.steps)
    names = sorted({s.optimizer for c in problems for s in c.optimizers})
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:
        points = [(c.steps, c.get(name)) for c in problems if c.get(name) is not None and c.get(name).final_losses]
        if not points:
            continue
        xs = [b for b, _ in points]
        left.errorbar(xs, [s.mean for _, s in points], yerr=[s.ci95 for _, s in points], fmt="o-", ms=4,
                      capsize=3, color=colors[name], label=name)
        if name == data.baseline:
            continue  # 1 by definition (the line at 1); its data-equivalent values are only the fit's residuals
        steps_speedups = [(b, s.speedup) for b, s in points if s.speedup is not None and math.isfinite(s.speedup)]
        if steps_speedups:
            right.plot(*zip(*steps_speedups), "s:", ms=4, color=colors[name], alpha=0.8,
                       label=f"{name}: steps to {data.baseline}'s loss")
        eq = data.speedups.get(name, {})
        finite = [(b, v) for b, v in sorted(eq.items()) if math.isfinite(v)]
        if finite:
            right.plot(*zip(*finite), "o-", ms=5, color=colors[name], label=f"{name}: data-equivalent (fit)")
    if data.fit is not None:
        dense = np.geomspace(min(data.budgets), max(data.budgets) * 1.5, 100)
        left.plot(dense, [data.fit.loss(d / data.unit) for d in dense], "--", color="gray", lw=1,
                  label=f"{data.baseline} fit α·D^−B + β (B = {data.fit.exponent:.2f}, β = {data.fit.beta:.3g})")
    ticks = sorted({c.steps for c in problems})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training budget (steps)")
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("final eval loss (mean ± 95% CI over seeds)")
    left.set_title(f"{data.workload}/{data.scale}: loss of the configuration tuned at each budget", fontsize=10)
    right.axhline(1.0, color="gray", lw=1, label=f"{data.baseline} (1 by definition)")
    right.set_ylabel(f"speedup vs {data.baseline}")
    right.set_title(f"{data.workload}/{data.scale}: speedup against budget\n"
                    "(dotted: steps to its loss; solid: data-equivalent, from the fit)", fontsize=10)
    left.legend(fontsize=7, loc="best")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    _save(fig, path)


def scale_order(workload: str, seen: list[str]) -> list[str]:
    try:
        from optarena.arena.workloads import get_workload

        order = list(get_workload(workload).scales)
    except ValueError:
        order = []
    return sorted(seen, key=lambda s: (order.index(s) if s in order else len(order), seen.index(s)))


def plot_scale(scores: StudyScores, workload: str, scales: list[str], path: Path) -> None:
    largest = {}
    for c in scores.problems:
        if c.workload == workload and (c.scale not in largest or c.steps > largest[c.scale].steps):
            largest[c.scale] = c
    data = {(d.workload, d.scale): d for d in scores.data_speedups}
    names = sorted({s.optimizer for c in largest.values() for s in c.optimizers})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = list(range(len(scales)))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        if name == scores.baseline:
            continue  # 1 by definition: the line at 1
        ys = [largest[s].get(name).speedup if largest[s].get(name) is not None else None for s in scales]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=f"{name}: steps to {scores.baseline}'s loss")
        eq = []
        for x, s in zip(xs, scales):
            d = data.get((workload, s))
            v = d.speedups.get(name, {}).get(largest[s].steps) if d is not None else None
            if v is not None and math.isfinite(v):
                eq.append((x, v))
        if eq:
            ax.plot(*zip(*eq), "D--", color=color, mfc="none", label=f"{name}: data-equivalent (fit)")
    ax.axhline(1.0, color="gray", lw=1, label=f"{scores.baseline} (1 by definition)")
    ax.set_xticks(xs, [f"{s}\n({largest[s].steps} steps)" for s in scales])
    ax.set_xlabel("scale (each at its largest budget)")
    ax.set_ylabel(f"speedup vs {scores.baseline}")
    ax.set_title(f"{workload}: speedup against scale\n(solid: steps to {scores.baseline}'s loss; dashed: "
                 "data-equivalent, from the fit)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)
