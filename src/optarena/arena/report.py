"""The arena's report, rebuilt from the store: ``report.md``, ``report.html`` and ``plots/*.png``.

Both documents come from one list of blocks (headings, paragraphs, tables, figures), so they
say the same thing. The HTML page is static and self-contained apart from the PNGs beside it
(inline CSS, no script, nothing fetched). Every table carries the tuning budget its numbers
were obtained with.

Plots: per cell, the loss curves of each optimizer's best configuration (band: min–max over
seeds) and the final loss against the learning rate of every trial; across the study, the
performance profiles (when it has at least two problems), final loss and speedup against the
budget (per workload and scale with several budgets) and speedup against scale (per workload
with several scales).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optarena.arena.analysis import (  # noqa: E402
    APPROX_BEST_EPS,
    CellSummary,
    DataEquivalentSpeedup,
    StudyScores,
    performance_profile,
    score_study,
)
from optarena.arena.store import ResultStore  # noqa: E402

__all__ = ["format_hparams", "ranking_rows", "render_html", "render_markdown", "write_report"]


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


def ranking_rows(cell: CellSummary) -> list[dict[str, str]]:
    """The ranking table of one cell as strings, best first (shared by the CLI and the reports)."""
    rows = []
    for rank, s in enumerate(cell.optimizers, start=1):
        finite = bool(s.final_losses)
        speedup = _fmt(s.speedup, ".2f") + "x" if s.speedup is not None else ("not reached" if finite else "—")
        rows.append({
            "rank": str(rank) if finite else "—",
            "optimizer": s.optimizer,
            "final eval loss": f"{s.mean:.4f} ± {s.ci95:.4f}" if finite else "no finished trial",
            "seeds": str(len(s.final_losses)),
            f"steps to {cell.baseline} loss": _fmt(s.steps_to_target, ".0f"),
            f"speedup vs {cell.baseline}": speedup,
            "LR sensitivity": _fmt(s.lr_sensitivity),
            "trials ok/div/fail": f"{len(s.trials) - s.n_diverged - s.n_failed}/{s.n_diverged}/{s.n_failed}",
            "tuning budget": f"{_count(len(s.trials), 'trial')} + {_count(s.seed_runs, 'seed run')} = "
                             f"{s.budget_steps:,} steps",
            "ms/step": _fmt(1000 * s.mean_time_per_step if s.mean_time_per_step else None, ".1f"),
            "best hyperparameters": format_hparams(s.best_hparams),
        })
    return rows


# -- blocks, rendered twice ------------------------------------------------------------------------

@dataclass
class _Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "img"
    text: str = ""
    rows: Sequence[dict[str, str]] = ()
    src: str = ""


def _md_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return "_no runs_\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(blocks: Sequence[_Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            out += [_md_table(b.rows)]
        elif b.kind == "img":
            out += [f"![{b.text}]({b.src})", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the reports use: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0 auto;
       max-width: 1180px; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d8dde6; }
h3 { margin-top: 1.5em; }
p { max-width: 80em; } code { background: #f1f3f6; padding: 0 .25em; border-radius: 3px; }
.table-wrap { overflow-x: auto; margin: .6em 0 1.2em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d8dde6; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f6; } tr:nth-child(even) td { background: #f8f9fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0 1.5em; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { font-size: 13px; color: #586170; }
nav ul { columns: 2; font-size: 14px; }
"""

_NUMERIC = re.compile(r"^[\s\d.,±x∞—\-+e/]+(steps)?$")


def render_html(blocks: Sequence[_Block], title: str) -> str:
    body, toc = [], []
    for b in blocks:
        if b.kind == "h1":
            body.append(f"<h1>{_inline(b.text)}</h1>")
        elif b.kind in ("h2", "h3"):
            anchor = f"s{len(toc)}"
            if b.kind == "h2":
                toc.append(f'<li><a href="#{anchor}">{_inline(b.text)}</a></li>')
            else:
                toc.append("")
            body.append(f'<{b.kind} id="{anchor}">{_inline(b.text)}</{b.kind}>')
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            if not b.rows:
                body.append("<p><em>no runs</em></p>")
                continue
            header = list(b.rows[0])
            head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header)
            lines = []
            for r in b.rows:
                cells = "".join(
                    f'<td class="num">{html.escape(r[h])}</td>' if _NUMERIC.match(r[h]) else
                    f"<td>{html.escape(r[h])}</td>" for h in header)
                lines.append(f"<tr>{cells}</tr>")
            body.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                        f'<tbody>{"".join(lines)}</tbody></table></div>')
        elif b.kind == "img":
            body.append(f'<figure><img src="{html.escape(b.src)}" alt="{html.escape(b.text)}">'
                        f"<figcaption>{_inline(b.text)}</figcaption></figure>")
    nav = f'<nav><ul>{"".join(t for t in toc if t)}</ul></nav>' if toc else ""
    if body and body[0].startswith("<h1"):
        body.insert(1, nav)
    else:
        body.insert(0, nav)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


# -- plots -----------------------------------------------------------------------------------------

def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(store: ResultStore, cell: CellSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in cell.optimizers:
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
    if cell.target is not None:
        ax.axhline(cell.target, color="gray", ls=":", lw=1, label=f"{cell.baseline} final loss")
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss")
    ax.set_title(f"{cell.workload}/{cell.scale}, {cell.steps} steps: best configuration per optimizer\n"
                 "(line: mean over seeds; band: min–max over seeds)", fontsize=10)
    finite = [v for s in cell.optimizers for v in s.final_losses]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3) - 0.02 * abs(lo), None)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _plot_lr(cell: CellSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [t.final_eval_loss for s in cell.optimizers for t in s.trials if t.final_eval_loss is not None
              and t.status == "ok"]
    ceiling = max(finite) * 1.05 if finite else 1.0
    for s in cell.optimizers:
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
    ax.set_title(f"{cell.workload}/{cell.scale}, {cell.steps} steps: final loss against learning rate", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def _plot_profiles(scores: StudyScores, path: Path) -> None:
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


def _plot_budget(scores: StudyScores, data: DataEquivalentSpeedup, path: Path) -> None:
    cells = sorted((c for c in scores.cells if (c.workload, c.scale) == (data.workload, data.scale)),
                   key=lambda c: c.steps)
    names = sorted({s.optimizer for c in cells for s in c.optimizers})
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in names:
        points = [(c.steps, c.get(name)) for c in cells if c.get(name) is not None and c.get(name).final_losses]
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
    ticks = sorted({c.steps for c in cells})
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


def _scale_order(workload: str, seen: list[str]) -> list[str]:
    try:
        from optarena.arena.workloads import get_workload

        order = list(get_workload(workload).scales)
    except ValueError:
        order = []
    return sorted(seen, key=lambda s: (order.index(s) if s in order else len(order), seen.index(s)))


def _plot_scale(scores: StudyScores, workload: str, scales: list[str], path: Path) -> None:
    largest = {}
    for c in scores.cells:
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


# -- the documents ---------------------------------------------------------------------------------

def _settings_line(settings: dict[str, Any]) -> str:
    """The study's settings that fit on a line (per-cell records, dicts, stay in the database)."""
    shown = {k: v for k, v in sorted(settings.items()) if v is not None and not isinstance(v, dict)}
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in shown.items()) + "." if shown else ""


def _details_rows(cell: CellSummary) -> list[dict[str, str]]:
    rows = []
    for s in cell.optimizers:
        rows.append({
            "optimizer": s.optimizer,
            "l0 (step-0 eval loss)": _fmt(s.initial_loss),
            "LR sensitivity": _fmt(s.lr_sensitivity),
            "over": s.lr_sensitivity_basis,
            f"approximately best (≤ {APPROX_BEST_EPS:g} from best)": str(len(s.approx_best)),
            "their configurations (final loss)": "; ".join(
                f"{format_hparams(t.hparams)} ({t.final_eval_loss:.4f})" for t in s.approx_best) or "—",
            "tuning budget": f"{len(s.trials)} trials",
        })
    return rows


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
            "tuning budget (all cells)": _budget(runs, steps),
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
    cells = {c.steps: c for c in scores.cells if (c.workload, c.scale) == (data.workload, data.scale)}
    rows = []
    for name in sorted(data.losses):
        row = {"optimizer": name}
        for b in sorted(cells):
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
        summaries = [c.get(name) for c in cells.values() if c.get(name) is not None]
        row["tuning budget"] = _budget(sum(s.budget_runs for s in summaries), sum(s.budget_steps for s in summaries))
        rows.append(row)
    return rows


def _tag(cell: CellSummary, several_budgets: bool) -> str:
    return f"{cell.workload}_{cell.scale}" + (f"_{cell.steps}" if several_budgets else "")


def _blocks(store: ResultStore, scores: StudyScores, study_config: dict[str, Any], plots: Path) -> list[_Block]:
    cfg = study_config
    b = scores.baseline
    blocks = [
        _Block("h1", "optarena arena report"),
        _Block("p", f"Study `{scores.study}`. Tuning budget, the same for every optimizer: "
                    f"**{cfg.get('trials')} trials** ({cfg.get('protocol')} search over each optimizer's registered "
                    f"space), the best configuration rerun on **{cfg.get('seeds')} seeds**; "
                    f"schedule `{cfg.get('schedule')}`; "
                    "scores are end-of-training eval losses (mean ± 95% CI over seeds). Each table states the runs "
                    "and steps its numbers cost."),
        _Block("p", _settings_line(cfg)),
    ]
    budgets: dict[tuple[str, str], int] = {}
    for c in scores.cells:
        budgets[(c.workload, c.scale)] = budgets.get((c.workload, c.scale), 0) + 1

    # across the study
    p = scores.profile
    blocks += [
        _Block("h2", "Scores across problems"),
        _Block("p", f"Each cell (workload, scale, budget) is a problem. Time = steps the best configuration needs "
                    f"to reach the problem's target (median over seeds); ratio = time / the fewest steps any optimizer "
                    f"needed; ratios above r_max = {p.r_max:g} count as never. B is the area under the performance "
                    f"profile ρ(τ) on [1, r_max] divided by r_max − 1 (1 = fastest everywhere). Problems of one "
                    f"workload and scale share a weight of 1. The geometric-mean speedup replaces 'never' by "
                    f"budget + 1 step (AlgoPerf); where the target is {b}'s own final loss, {b} needs the whole "
                    f"budget, so 'never' "
                    f"scores just below 1: read it next to the problems solved."),
        _Block("table", rows=_study_rows(scores)),
        _Block("table", rows=_problem_rows(scores)),
    ]
    for line in p.skipped:
        blocks.append(_Block("p", f"Left out: {line}."))
    if len(p.problems) >= 2:
        _plot_profiles(scores, plots / "profiles.png")
        blocks.append(_Block("img", "performance profiles ρ(τ) of every optimizer over the study's problems",
                             src="plots/profiles.png"))
    else:
        blocks.append(_Block("p", "One problem only: a profile would be a single step at each ratio above, so it "
                                  "is not plotted."))

    blocks += [_Block("h2", f"Data-equivalent speedup vs {b}"),
               _Block("p", f"Fantastic Pretraining Optimizers (Wen et al., arXiv:2509.02046): fit {b}'s final loss "
                           f"over the budgets as L(D) = α·D^−B + β, then D_eff = ((L − β)/α)^(−1/B) is the "
                           f"budget {b} would need to reach an optimizer's loss L at budget D; the speedup is "
                           f"D_eff / D.")]
    for data in scores.data_speedups:
        blocks.append(_Block("h3", f"{data.workload} / {data.scale}"))
        if data.fit is None:
            blocks.append(_Block("p", f"No data-equivalent speedup: {data.reason}."))
        else:
            f = data.fit
            blocks.append(_Block("p", f"Fit over {len(f.budgets)} budgets (D = steps / {data.unit}): "
                                      f"α = {f.alpha:.4g}, B = {f.exponent:.4g}, β = {f.beta:.4g}."))
            blocks.append(_Block("table", rows=_data_rows(scores, data)))
            blocks.append(_Block("p", "'extrapolated': D_eff lies more than 2x outside the budgets the fit saw; "
                                      "'below β': the loss is under the fitted floor, which the baseline never "
                                      "reaches."))
        if budgets[(data.workload, data.scale)] >= 2:
            name = f"budget_{data.workload}_{data.scale}.png"
            _plot_budget(scores, data, plots / name)
            blocks.append(_Block("img", f"{data.workload}/{data.scale}: final loss and speedup against the budget",
                                 src=f"plots/{name}"))

    scales_of: dict[str, list[str]] = {}
    for c in scores.cells:
        if c.scale not in scales_of.setdefault(c.workload, []):
            scales_of[c.workload].append(c.scale)
    several = {w: s for w, s in scales_of.items() if len(s) >= 2}
    if several:
        blocks.append(_Block("h2", f"Speedup vs {b} across scales"))
        for workload, scales in several.items():
            name = f"scale_{workload}.png"
            _plot_scale(scores, workload, _scale_order(workload, scales), plots / name)
            blocks.append(_Block("img", f"{workload}: speedup against scale", src=f"plots/{name}"))

    # per cell
    for cell in scores.cells:
        tag = _tag(cell, budgets[(cell.workload, cell.scale)] > 1)
        _plot_curves(store, cell, plots / f"curves_{tag}.png")
        _plot_lr(cell, plots / f"lr_{tag}.png")
        blocks += [
            _Block("h2", f"{cell.workload} / {cell.scale} ({cell.steps} steps)"),
            _Block("table", rows=ranking_rows(cell)),
            _Block("p", f"Speedup = {cell.baseline}'s budget / steps the optimizer's best configuration needs to reach "
                        f"{cell.baseline}'s final loss ({_fmt(cell.target)}); 'not reached' means it never did within "
                        f"the budget. LR sensitivity (Wortsman et al., arXiv:2309.14322) = mean over the trials' "
                        f"learning rates of min(final loss, l0) − best loss; diverged runs count as l0; lower is "
                        f"more robust."),
            _Block("table", rows=_details_rows(cell)),
            _Block("img", "loss curves", src=f"plots/curves_{tag}.png"),
            _Block("img", "final loss against learning rate", src=f"plots/lr_{tag}.png"),
        ]
    return blocks


def write_report(store: ResultStore, study: str, out_dir: str | Path, study_config: dict[str, Any]) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for ``study`` into ``out_dir``; returns the
    markdown path (the HTML page lies beside it)."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    scores = score_study(store, study, baseline=study_config.get("baseline", "adamw"))
    blocks = _blocks(store, scores, study_config, plots)
    (out / "report.html").write_text(render_html(blocks, f"optarena arena report — {study}"), encoding="utf-8")
    path = out / "report.md"
    path.write_text(render_markdown(blocks), encoding="utf-8")
    return path
