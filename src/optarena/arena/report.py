"""The arena's report, rebuilt from the store: ``report.md``, ``report.html`` and ``plots/*.png``.

The content (tables, captions, which figures) is built here as one list of blocks
(:mod:`optarena.arena.render` writes it as markdown and HTML; :mod:`optarena.arena.plots` draws
the figures). Every table carries the tuning budget its numbers were obtained with.
:func:`write_report` returns the :class:`~optarena.arena.scores.StudyScores` it rendered, so a
caller prints the same numbers without computing them again.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from optarena.arena.plots import plot_budget, plot_curves, plot_lr, plot_profiles, plot_scale, plot_training, scale_order
from optarena.arena.render import Block, render_html, render_markdown
from optarena.arena.scores import StudyScores, score_study
from optarena.arena.search import APPROX_BEST_TOLERANCE
from optarena.arena.store import ResultStore
from optarena.arena.summaries import OptimizerSummary, ProblemSummary
from optarena.scaling.data_scaling import DataEquivalentSpeedup

__all__ = ["empty_cells", "failure_lines", "format_hparams", "ranking_rows", "write_report"]


def format_hparams(hparams: dict[str, Any] | None) -> str:
    if not hparams:
        return "—"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _speed(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "—"
    return "∞" if math.isinf(x) else f"{x:.2f}x"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _budget(runs: int, steps: int) -> str:
    return f"{_count(runs, 'run')} / {steps:,} steps"


def _no_result(s: OptimizerSummary) -> str:
    """Why an optimizer has no final loss on a problem."""
    if s.trials and s.n_diverged == len(s.trials):
        return "all diverged"
    if s.trials and s.n_failed == len(s.trials):
        return "all failed"
    return "no finished trial"


def ranking_rows(problem: ProblemSummary) -> list[dict[str, str]]:
    """The ranking table of one problem as strings, best first (shared by the CLI and the reports)."""
    rows = []
    noted = any(s.note for s in problem.optimizers)
    for rank, s in enumerate(problem.optimizers, start=1):
        finite = bool(s.final_losses)
        speedup = _fmt(s.speedup, ".2f") + "x" if s.speedup is not None else ("not reached" if finite else "—")
        rows.append({
            "rank": str(rank) if finite else "—",
            "optimizer": s.optimizer,
            "final eval loss": f"{s.mean:.4f} ± {s.ci95:.4f}" if finite else _no_result(s),
            "seeds": str(len(s.final_losses)),
            f"steps to {problem.baseline} loss": _fmt(s.steps_to_target, ".0f"),
            f"speedup vs {problem.baseline}": speedup,
            "LR sensitivity": _fmt(s.lr_sensitivity),
            "trials ok/div/fail": f"{len(s.trials) - s.n_diverged - s.n_failed}/{s.n_diverged}/{s.n_failed}",
            "tuning budget": f"{_count(len(s.trials), 'trial')} + {_count(s.seed_runs, 'seed run')} = "
                             f"{s.budget_steps:,} steps",
            "ms/step": _fmt(1000 * s.mean_time_per_step if s.mean_time_per_step else None, ".1f"),
            "best hyperparameters": format_hparams(s.best_hparams),
        })
        for name in problem.metric_names:  # accuracy, ...: mean over the best configuration's seeds
            rows[-1][f"final {name}"] = _fmt(s.metrics.get(name))
        if noted:
            rows[-1]["note"] = s.note or "—"
    return rows


def _failure_reasons(problem: ProblemSummary) -> list[tuple[str, int, str]]:
    """(optimizer, count, reason) per distinct reason its trials failed with (errors, not divergences)."""
    out = []
    for s in problem.optimizers:
        reasons = Counter((t.error or "no error recorded").strip().splitlines()[0]
                          for t in s.trials if t.status == "failed")
        out += [(s.optimizer, n, reason) for reason, n in reasons.items()]
    return out


def failure_lines(problem: ProblemSummary) -> list[str]:
    """Why trials failed: each reason once, with its count (for the console)."""
    return [f"{name}: {_count(n, 'run')} failed: {reason}" for name, n, reason in _failure_reasons(problem)]


def empty_cells(scores: StudyScores) -> list[str]:
    """The cells that ended without a finished trial because their runs failed (not diverged), one line each."""
    return [f"{problem.workload}/{problem.scale}/{s.optimizer}@{problem.steps}: no finished trial "
            f"({s.n_failed} of {_count(len(s.trials), 'trial')} failed, {s.n_diverged} diverged)"
            for problem in scores.problems for s in problem.optimizers
            if not s.final_losses and s.n_failed]



# -- the documents ---------------------------------------------------------------------------------

def _settings_line(settings: dict[str, Any]) -> str:
    """The study's settings that fit on a line (per-problem records, dicts, stay in the database)."""
    shown = {k: v for k, v in sorted(settings.items()) if v is not None and not isinstance(v, dict)}
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in shown.items()) + "." if shown else ""


def _details_rows(problem: ProblemSummary) -> list[dict[str, str]]:
    rows = []
    for s in problem.optimizers:
        rows.append({
            "optimizer": s.optimizer,
            "l0 (step-0 eval loss)": _fmt(s.initial_loss),
            "LR sensitivity": _fmt(s.lr_sensitivity),
            "over": s.lr_sensitivity_basis,
            f"approximately best (≤ {APPROX_BEST_TOLERANCE:g} from best)": str(len(s.approx_best)),
            "their configurations (final loss)": "; ".join(
                f"{format_hparams(t.hparams)} ({t.final_eval_loss:.4f})" for t in s.approx_best) or "—",
            "diverged at step": ", ".join(str(t.diverged_step) for t in s.trials if t.status == "diverged") or "—",
            "final train loss": _fmt(s.final_train_loss),
            "s/run (of it eval)": f"{_fmt(s.wall_time, '.1f')} ({_fmt(s.eval_time, '.1f')})",
            "tuning budget": f"{len(s.trials)} trials",
        })
    return rows


def _failures(problem: ProblemSummary) -> list[str]:
    """The report's paragraph per failure reason."""
    return [f"Failed: {name}, {_count(n, 'run')}: `{reason}`." for name, n, reason in _failure_reasons(problem)]


def _study_rows(scores: StudyScores) -> list[dict[str, str]]:
    p = scores.profile
    names = sorted(p.scores, key=lambda n: (-p.scores[n], n))
    rows = []
    for name in names:
        runs, steps = scores.budget(name)
        rows.append({
            "optimizer": name,
            f"benchmark score B (r_max = {p.r_max:g})": f"{p.scores[name]:.3f}",
            f"geometric-mean speedup vs {scores.baseline}": _speed(p.geomean_speedup.get(name)),
            "problems solved within r_max": f"{p.solved(name)}/{len(p.problems)}",
            "tuning budget (all problems)": _budget(runs, steps),
        })
    return rows


def _problem_rows(scores: StudyScores) -> list[dict[str, str]]:
    p = scores.profile
    names = sorted(p.scores, key=lambda n: (-p.scores[n], n))
    rows = []
    for i, prob in enumerate(p.problems):
        row = {
            "problem": f"{prob.workload}/{prob.scale}/{prob.steps} steps",
            "target loss": f"{prob.target:.4f}",
            "target from": "workload" if prob.target_source == "workload" else f"{p.baseline} final loss",
            "weight": f"{prob.weight:.2g}",
        }
        for name in names:
            t, r = prob.times[name], p.ratios[name][i]
            row[f"{name} steps (ratio)"] = ("not reached" if math.isinf(t) else
                                          f"{t:.0f} ({'>r_max' if math.isinf(r) else f'{r:.2f}'})")
        rows.append(row)
    return rows


def _data_rows(scores: StudyScores, data: DataEquivalentSpeedup) -> list[dict[str, str]]:
    problems = {c.steps: c for c in scores.problems if (c.workload, c.scale) == (data.workload, data.scale)}
    rows = []
    for name in sorted(data.losses):
        row = {"optimizer": name}
        for b in sorted(problems):
            loss = data.losses[name].get(b)
            v = data.speedups.get(name, {}).get(b)
            text = "—" if loss is None else f"{loss:.4f}"
            if v is not None and math.isinf(v):
                text += " → ∞ (below β)"
            elif v is not None:
                d_eff = v * b / data.unit  # in the fit's units
                outside = d_eff > 2 * max(data.fit.budgets) or d_eff < min(data.fit.budgets) / 2
                text += f" → {v:.2f}x" if v >= 0.1 else f" → {v:.2g}x"
                text += " (extrapolated)" if outside else ""
            row[f"{b} steps: loss → D_eff/D"] = text
        summaries = [c.get(name) for c in problems.values() if c.get(name) is not None]
        row["tuning budget"] = _budget(sum(s.budget_runs for s in summaries), sum(s.budget_steps for s in summaries))
        rows.append(row)
    return rows


def _tag(problem: ProblemSummary, several_budgets: bool) -> str:
    return f"{problem.workload}_{problem.scale}" + (f"_{problem.steps}" if several_budgets else "")


def _blocks(store: ResultStore, scores: StudyScores, study_config: dict[str, Any], plots: Path) -> list[Block]:
    cfg = study_config
    b = scores.baseline
    blocks = [
        Block("h1", "optarena arena report"),
        Block("p", f"Study `{scores.study}`. Tuning budget, the same for every optimizer: "
                    f"**{cfg.get('trials')} trials** ({cfg.get('protocol')} search over each optimizer's registered "
                    f"space), the best configuration rerun on **{cfg.get('seeds')} seeds**; "
                    f"schedule `{cfg.get('schedule')}`; "
                    "scores are end-of-training eval losses (mean ± 95% CI over seeds). Each table states the runs "
                    "and steps its numbers cost."),
        Block("p", _settings_line(cfg)),
    ]
    budgets: dict[tuple[str, str], int] = {}
    for c in scores.problems:
        budgets[(c.workload, c.scale)] = budgets.get((c.workload, c.scale), 0) + 1

    # across the study
    p = scores.profile
    blocks += [
        Block("h2", "Scores across problems"),
        Block("p", f"Each (workload, scale, budget) is a problem. Time = steps the best configuration needs "
                    f"to reach the problem's target (median over seeds); ratio = time / the fewest steps any optimizer "
                    f"needed; ratios above r_max = {p.r_max:g} count as never. B is the area under the performance "
                    f"profile ρ(τ) on [1, r_max] divided by r_max − 1 (1 = fastest everywhere). Problems of one "
                    f"workload and scale share a weight of 1. The geometric-mean speedup replaces 'never' by "
                    f"budget + 1 step (AlgoPerf); where the target is {b}'s own final loss, {b} needs the whole "
                    f"budget, so 'never' "
                    f"scores just below 1: read it next to the problems solved."),
        Block("table", rows=_study_rows(scores)),
        Block("table", rows=_problem_rows(scores)),
    ]
    for line in p.skipped:
        blocks.append(Block("p", f"Left out: {line}."))
    if len(p.problems) >= 2:
        plot_profiles(scores, plots / "profiles.png")
        blocks.append(Block("img", "performance profiles ρ(τ) of every optimizer over the study's problems",
                             src="plots/profiles.png"))
    else:
        blocks.append(Block("p", "One problem only: a profile would be a single step at each ratio above, so it "
                                  "is not plotted."))

    blocks += [Block("h2", f"Data-equivalent speedup vs {b}"),
               Block("p", f"Fantastic Pretraining Optimizers (Wen et al., arXiv:2509.02046): fit {b}'s final loss "
                           f"over the budgets as L(D) = α·D^−B + β, then D_eff = ((L − β)/α)^(−1/B) is the "
                           f"budget {b} would need to reach an optimizer's loss L at budget D; the speedup is "
                           f"D_eff / D.")]
    for data in scores.data_speedups:
        blocks.append(Block("h3", f"{data.workload} / {data.scale}"))
        if data.fit is None:
            blocks.append(Block("p", f"No data-equivalent speedup: {data.reason}."))
        else:
            f = data.fit
            blocks.append(Block("p", f"Fit over {len(f.budgets)} budgets (D = steps / {data.unit}): "
                                      f"α = {f.alpha:.4g}, B = {f.exponent:.4g}, β = {f.beta:.4g}."))
            blocks.append(Block("table", rows=_data_rows(scores, data)))
            blocks.append(Block("p", "'extrapolated': D_eff lies more than 2x outside the budgets the fit saw; "
                                      "'below β': the loss is under the fitted floor, which the baseline never "
                                      "reaches."))
        if budgets[(data.workload, data.scale)] >= 2:
            name = f"budget_{data.workload}_{data.scale}.png"
            plot_budget(scores, data, plots / name)
            blocks.append(Block("img", f"{data.workload}/{data.scale}: final loss and speedup against the budget",
                                 src=f"plots/{name}"))

    scales_of: dict[str, list[str]] = {}
    for c in scores.problems:
        if c.scale not in scales_of.setdefault(c.workload, []):
            scales_of[c.workload].append(c.scale)
    several = {w: s for w, s in scales_of.items() if len(s) >= 2}
    if several:
        blocks.append(Block("h2", f"Speedup vs {b} across scales"))
        for workload, scales in several.items():
            name = f"scale_{workload}.png"
            plot_scale(scores, workload, scale_order(workload, scales), plots / name)
            blocks.append(Block("img", f"{workload}: speedup against scale", src=f"plots/{name}"))

    # per problem
    for problem in scores.problems:
        tag = _tag(problem, budgets[(problem.workload, problem.scale)] > 1)
        plot_curves(store, problem, plots / f"curves_{tag}.png")
        plot_lr(problem, plots / f"lr_{tag}.png")
        training = plot_training(store, problem, plots / f"training_{tag}.png")
        blocks += [
            Block("h2", f"{problem.workload} / {problem.scale} ({problem.steps} steps)"),
            Block("table", rows=ranking_rows(problem)),
            Block("p", f"Speedup = {problem.baseline}'s budget / steps the optimizer's best configuration needs to "
                        f"reach {problem.baseline}'s final loss ({_fmt(problem.target)}); 'not reached' means it never "
                        f"did within the budget. LR sensitivity (Wortsman et al., arXiv:2309.14322) = mean over the trials' "
                        f"learning rates of min(final loss, l0) − best loss; diverged runs count as l0; lower is "
                        f"more robust."),
            Block("table", rows=_details_rows(problem)),
            *(Block("p", line) for line in _failures(problem)),
            Block("img", "loss curves", src=f"plots/curves_{tag}.png"),
            Block("img", "final loss against learning rate", src=f"plots/lr_{tag}.png"),
            *([Block("img", "training signals: train loss against wall-clock time, gradient norm and stability "
                            "proxies against tokens", src=f"plots/training_{tag}.png")] if training else []),
        ]
    return blocks


def write_report(store: ResultStore, study: str, out_dir: str | Path, study_config: dict[str, Any]) -> StudyScores:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for ``study`` into ``out_dir``.

    Returns the scores the report shows (for a caller that prints them too).
    """
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    scores = score_study(store, study, baseline=study_config.get("baseline", "adamw"))
    blocks = _blocks(store, scores, study_config, plots)
    (out / "report.html").write_text(render_html(blocks, f"optarena arena report — {study}"), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    return scores
