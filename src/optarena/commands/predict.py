"""``optarena predict``: fit the learning-rate-annealing law on recorded runs, predict other schedules.

Reads runs from the results store, fits L(s) = L0 + A S1^-alpha - C S2
(:mod:`optarena.scaling.loss_curve`) on the ``--fit`` runs (e.g. a constant and a cosine
run), prints the fitted parameters, predicts the final loss of each ``--schedule`` for the
same budget and peak learning rate, and plots predicted against observed curves where a
run with that schedule (same cell, steps and hyperparameters) exists in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["curve_arrays", "peak_lr", "predict_command", "run_schedule"]

console = Console()


def curve_arrays(points: list[Any], loss: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """(lrs, losses) in the loss-curve convention from a run's stored curve points.

    ``lrs[i]`` is the lr of update i (logged on the row of step i+1). ``losses[i]`` is the
    loss after update i: the eval loss of row i+1 (NaN where not evaluated), or with
    ``loss="train"`` the train loss of row i+2 (computed before update i+1).
    """
    if loss not in ("eval", "train"):
        raise ValueError(f"loss must be 'eval' or 'train', got {loss!r}")
    rows = {p.step: p for p in points if p.step >= 1}
    if not rows:
        raise ValueError("the run has no logged training steps")
    steps = max(rows)
    missing = [s for s in range(1, steps + 1) if s not in rows or rows[s].lr is None]
    if missing:
        raise ValueError(f"the run's curve lacks learning rates at steps {missing[:5]} (need one row per step)")
    lrs = np.array([rows[s].lr for s in range(1, steps + 1)], dtype=np.float64)
    losses = np.full(steps, np.nan)
    for i in range(steps):
        row = rows.get(i + 1 if loss == "eval" else i + 2)
        value = None if row is None else (row.eval_loss if loss == "eval" else row.train_loss)
        if value is not None:
            losses[i] = value
    return lrs, losses


def run_schedule(record: Any) -> tuple[str, dict[str, Any], int, int]:
    """(schedule name, options, steps, warmup) a stored run was trained with."""
    config = record.config
    steps = int(config.get("steps") or record.steps)
    warmup = round(float(config.get("warmup_fraction", 0.0)) * steps)
    return config.get("schedule", "constant"), dict(config.get("schedule_options") or {}), steps, warmup


def peak_lr(record: Any, lrs: np.ndarray) -> float:
    """The base lr of a run (its lrs divided by its schedule's multipliers), else its largest lr."""
    from optarena.schedules import make_schedule

    try:
        name, options, steps, warmup = run_schedule(record)
        multipliers = np.array(make_schedule(name, steps, warmup, **options).values(min(steps, lrs.size)))
        i = int(np.argmax(multipliers))
        if multipliers[i] > 0:
            return float(lrs[i] / multipliers[i])
    except (ValueError, TypeError):
        pass
    return float(lrs.max())


def _schedule_label(name: str, options: dict[str, Any]) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) if options else "")


def predict_command(
    fit: str = typer.Option(None, help="comma-separated run ids to fit on (e.g. a constant and a cosine run); "
                                       "omit to list the runs in the store"),
    schedule: list[str] = typer.Option([], "--schedule", "-s",
                                       help="schedule to predict, repeatable, e.g. -s wsd:decay_fraction=0.2"),
    observed: str = typer.Option(None, help="comma-separated run ids to predict from their own recorded lrs "
                                            "and compare"),
    loss: str = typer.Option("eval", help="which loss to fit: eval (sparse) or train (every step)"),
    decay_factor: str = typer.Option("0.999", help="lambda of the annealing momentum; several, comma-separated, "
                                                   "picks the best fit (e.g. 0.99,0.995,0.999)"),
    fit_from: int = typer.Option(0, help="leave out losses before this step (besides warmup)"),
    out: Path = typer.Option(Path("arena-results"), help="directory of the results database and the plot"),
    storage: str = typer.Option(None, help="SQLAlchemy URL (default: the SQLite file in --out)"),
    plot: Path = typer.Option(None, help="plot file (default: <out>/predict.png)"),
) -> None:
    """Fit the LR-annealing scaling law on recorded runs and predict the loss of other schedules."""
    from optarena.arena.store import ResultStore, default_storage_url
    from optarena.scaling.loss_curve import compare_curves, fit_annealing_law, plot_predictions, predict_curve
    from optarena.schedules import make_schedule, parse_schedule

    def fail(message: str) -> None:
        console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)
        raise typer.Exit(code=2)

    def ids(text: str | None, what: str) -> list[int]:
        try:
            return [int(v) for v in (text or "").split(",") if v.strip()]
        except ValueError:
            fail(f"--{what} takes comma-separated run ids, got {text!r}")
            return []

    if plot is not None and plot.is_dir():
        fail(f"--plot {str(plot)!r} is a folder; name a PNG file, e.g. {str(plot / 'predict.png')!r}")
    url = storage or default_storage_url(out)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        fail(f"no results database at {url}; record runs first (optarena run / optarena arena --out {out})")
    store = ResultStore(url)
    runs = {r.id: r for r in store.runs()}
    fit_ids = ids(fit, "fit")
    if not fit_ids:
        table = Table(title=f"runs in {url} (pass --fit ID,ID)")
        for col in ("id", "cell", "schedule", "steps", "status", "final eval loss"):
            table.add_column(col)
        for r in runs.values():
            name, options, steps, _ = run_schedule(r)
            final = f"{r.final_eval_loss:.4f}" if r.final_eval_loss is not None else "—"
            table.add_row(str(r.id), r.cell.label, _schedule_label(name, options), str(steps), r.status, final)
        console.print(table)
        return
    try:
        specs = [parse_schedule(s) for s in schedule]
    except ValueError as err:
        fail(str(err))
    chosen = []
    for run_id in fit_ids + ids(observed, "observed"):
        if run_id not in runs:
            fail(f"no run with id {run_id}; known ids: {', '.join(map(str, runs)) or 'none'}")
        if runs[run_id].status != "ok":
            fail(f"run {run_id} has status {runs[run_id].status!r}; only finished ('ok') runs can be used")
        chosen.append(run_id)
    try:
        lambdas = [float(v) for v in decay_factor.split(",") if v.strip()]
        arrays = {run_id: curve_arrays(store.curve(run_id), loss) for run_id in set(chosen)}
        params = fit_annealing_law([arrays[i] for i in fit_ids], decay_factor=lambdas, fit_from=fit_from)
    except ValueError as err:
        fail(str(err))

    reference = runs[fit_ids[0]]
    base_lr = peak_lr(reference, arrays[fit_ids[0]][0])
    _, _, steps, warmup = run_schedule(reference)
    console.print(f"fitted on runs {', '.join(map(str, fit_ids))} ({loss} loss, {params.n_points} points):")
    console.print(f"  {params}")
    console.print("  R^2 per fitted run: " + ", ".join(f"{i}: {r2:.4f}" for i, r2 in zip(fit_ids, params.r2_per_curve)))
    for note in params.notes:
        console.print(f"  [yellow]note:[/] {note}")

    table = Table(title=f"predicted final {loss} loss: {reference.cell.label}, {steps} steps, peak lr {base_lr:.3g}")
    for col in ("schedule", "source", "predicted", "observed", "rel. error", "MAPE after warmup"):
        table.add_column(col, overflow="fold")
    plotted: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    shown = set(fit_ids)

    def add_row(label: str, source: str, predicted: np.ndarray, obs: np.ndarray | None) -> None:
        if obs is not None and np.isfinite(obs).any():
            errors = compare_curves(predicted, obs, start=warmup)
            i = int(errors["final_step"]) - 1
            table.add_row(label, source, f"{predicted[i]:.4f}", f"{errors['final_observed']:.4f}",
                          f"{100 * errors['final_rel_error']:.2f}%", f"{100 * errors['mape']:.2f}%")
        else:
            table.add_row(label, source, f"{predicted[-1]:.4f}", "—", "—", "—")
        plotted[f"{label} [{source}]"] = (predicted, obs)

    for run_id in fit_ids:
        lrs, losses = arrays[run_id]
        name, options, _, _ = run_schedule(runs[run_id])
        add_row(_schedule_label(name, options), f"fit run {run_id}", predict_curve(params, lrs), losses)
    for name, options in specs:
        try:
            lrs = base_lr * np.array(make_schedule(name, steps, warmup, **options).values(steps))
        except ValueError as err:
            fail(str(err))
        match = next((r for r in runs.values() if r.status == "ok" and r.id not in fit_ids
                      and (r.workload, r.scale, r.optimizer) == (reference.workload, reference.scale, reference.optimizer)
                      and r.hparams == reference.hparams
                      and run_schedule(r)[:3] == (name, options, steps)), None)
        obs = None
        if match is not None:
            obs = curve_arrays(store.curve(match.id), loss)[1]
            shown.add(match.id)
        source = f"run {match.id}" if match else "schedule"
        add_row(_schedule_label(name, options), source, predict_curve(params, lrs), obs)
    for run_id in ids(observed, "observed"):
        if run_id in shown:
            continue
        shown.add(run_id)
        lrs, losses = arrays[run_id]
        name, options, _, _ = run_schedule(runs[run_id])
        add_row(_schedule_label(name, options), f"run {run_id}", predict_curve(params, lrs), losses)
    console.print(table)
    path = plot_predictions(plot or out / "predict.png", plotted,
                            title=f"LR-annealing law fitted on runs {', '.join(map(str, fit_ids))}")
    console.print(f"plot: {path}")
