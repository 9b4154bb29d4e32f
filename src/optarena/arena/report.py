"""The arena's report: a markdown file with ranking tables and PNG plots, rebuilt from the store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from optarena.arena.analysis import CellSummary, summarize_study  # noqa: E402
from optarena.arena.store import ResultStore  # noqa: E402

__all__ = ["format_hparams", "ranking_rows", "write_report"]


def format_hparams(hparams: dict[str, Any] | None) -> str:
    if not hparams:
        return "—"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ranking_rows(cell: CellSummary) -> list[dict[str, str]]:
    """The ranking table of one cell as strings, best first (shared by the CLI and the markdown)."""
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
            "trials ok/div/fail": f"{len(s.trials) - s.n_diverged - s.n_failed}/{s.n_diverged}/{s.n_failed}",
            "ms/step": _fmt(1000 * s.mean_time_per_step if s.mean_time_per_step else None, ".1f"),
            "best hyperparameters": format_hparams(s.best_hparams),
        })
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no runs_\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
    ax.set_title(f"{cell.workload}/{cell.scale}: best configuration per optimizer (band: min–max over seeds)")
    finite = [v for s in cell.optimizers for v in s.final_losses]
    if finite:
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3) - 0.02 * abs(lo), None)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lr(cell: CellSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [t.final_eval_loss for s in cell.optimizers for t in s.trials if t.final_eval_loss is not None
              and t.status == "ok"]
    ceiling = max(finite) * 1.05 if finite else 1.0
    for s in cell.optimizers:
        ok = sorted((t.hparams["lr"], t.final_eval_loss) for t in s.trials
                    if t.status == "ok" and t.final_eval_loss is not None and "lr" in t.hparams)
        bad = [t.hparams["lr"] for t in s.trials if t.status != "ok" and "lr" in t.hparams]
        line, = ax.plot([x for x, _ in ok], [y for _, y in ok], "o-", label=s.optimizer, ms=4)
        if bad:
            ax.plot(bad, [ceiling] * len(bad), "x", color=line.get_color(), ms=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (tuned trials; x = diverged or failed)")
    ax.set_ylabel("final eval loss")
    ax.set_title(f"{cell.workload}/{cell.scale}: final loss against learning rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(store: ResultStore, study: str, out_dir: str | Path, study_config: dict[str, Any]) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for ``study`` into ``out_dir``; returns the report path."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    cells = summarize_study(store, study, baseline=study_config.get("baseline", "adamw"))
    lines = [
        "# optarena arena report",
        "",
        f"Study `{study}`. Tuning budget, the same for every optimizer: **{study_config.get('trials')} trials** "
        f"({study_config.get('protocol')} search over each optimizer's registered space), the best configuration "
        f"rerun on **{study_config.get('seeds')} seeds**; schedule `{study_config.get('schedule')}`; "
        "scores are end-of-training eval losses (mean ± 95% CI over seeds).",
        "",
    ]
    for cell in cells:
        tag = f"{cell.workload}_{cell.scale}"
        _plot_curves(store, cell, plots / f"curves_{tag}.png")
        _plot_lr(cell, plots / f"lr_{tag}.png")
        lines += [
            f"## {cell.workload} / {cell.scale} ({cell.steps} steps)",
            "",
            _markdown_table(ranking_rows(cell)),
            f"Speedup = {cell.baseline}'s budget / steps the optimizer's best configuration needs to reach "
            f"{cell.baseline}'s final loss ({_fmt(cell.target)}); 'not reached' means it never did within the budget.",
            "",
            f"![loss curves](plots/curves_{tag}.png)",
            "",
            f"![final loss against learning rate](plots/lr_{tag}.png)",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
