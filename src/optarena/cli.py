"""The ``optarena`` command line: ``arena | run | report | list`` and the commands of optarena.commands."""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Optimizers from the literature, compared fairly.")
console = Console()
SKIP_HELP = ("skip steps whose gradient is not finite (parameters and optimizer state untouched, the count "
             "recorded as the metric skipped_steps) instead of letting the run diverge")


@app.command("list")
def list_command(what: str = typer.Argument("optimizers", help="optimizers or schedules")) -> None:
    """List registered optimizers (family, state memory, paper) or schedules (options, paper)."""
    from optarena.optim import get_spec, list_optimizers

    if what == "schedules":
        _list_schedules()
        return
    if what != "optimizers":
        _fail(f"optarena list takes 'optimizers' or 'schedules', got {what!r}")
    table = Table(title="optarena optimizers")
    for col in ("name", "family", "state bytes/param (fp32)", "paper"):
        table.add_column(col)
    for name in list_optimizers():
        spec = get_spec(name)
        table.add_row(name, spec.family, f"{spec.state_bytes:g}", str(spec.paper))
    console.print(table)


def _list_schedules() -> None:
    from optarena.schedules import get_schedule, list_schedules

    table = Table(title="optarena schedules (NAME:option=value,...)")
    for col in ("name", "options (default: valid values)", "paper"):
        table.add_column(col)
    for name in list_schedules():
        spec = get_schedule(name)
        options = "\n".join(f"{k}={spec.defaults[k]}: {o.describe()}" for k, o in spec.options.items())
        table.add_row(f"{name}\n{spec.description}", options, spec.paper)
    console.print(table)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fail(message: str) -> None:
    """One line naming what is wrong and what would be valid, exit code 2."""
    console.print(f"[bold red]error:[/] {escape(one_line(message))}", soft_wrap=True)
    raise typer.Exit(code=2)


def one_line(error: BaseException | str) -> str:
    """An error as one line: pydantic's per-field errors joined, without its links and prefixes."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors():
            message = str(e.get("msg", "")).removeprefix("Value error, ")
            field = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{field}: {message}" if field else message)
        return "; ".join(parts)
    return " ".join(str(error).split())


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose unusable results database ends it with one line and exit code 2, wherever it is found,
    and whose Ctrl-C ends it with one line saying how to resume (exit code 130)."""
    import sqlalchemy as sa

    from optarena.arena.store import StoreError, damaged, is_damaged, storage_url

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StoreError as err:
            _fail(str(err))
        except sa.exc.DBAPIError as err:  # damage found past the checks on opening (a page read later)
            if not is_damaged(err):
                raise
            _fail(damaged(storage_url(kwargs.get("storage"), kwargs.get("out", Path("arena-results"))), err))
        except KeyboardInterrupt:
            console.print("interrupted: finished runs are stored; rerun the same command to resume "
                          "(each unfinished run restarts from its last checkpoint)")
            raise typer.Exit(code=130) from None

    return wrapper


def _open(url: str, **kwargs: Any):
    """The results store at ``url``, its repairs said on the console."""
    from optarena.arena.store import open_store

    store = open_store(url, **kwargs)
    for note in store.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    return store


def _check_seed(seed: int) -> None:
    from optarena.arena.runner import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed}")


def _print_rankings(scores, settings: dict) -> None:
    """The ranking table of each problem of ``scores`` (what the report shows), for the terminal."""
    from optarena.arena.report import ranking_rows

    for problem in scores.problems:
        rows = ranking_rows(problem)
        table = Table(title=f"{problem.workload}/{problem.scale}: {settings.get('trials')} trials x "
                            f"{settings.get('seeds')} seeds each, {problem.steps} steps")
        # the terminal gets the scores; the budget is in the title, the rest in report.md / report.html
        hidden = ("best hyperparameters", "tuning budget", f"steps to {problem.baseline} loss")
        columns = [c for c in (rows[0] if rows else {}) if c not in hidden]
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(row[c] for c in columns))
        console.print(table)
        for row in rows:
            console.print(f"  {row['optimizer']}: {row['best hyperparameters']}")


@app.command()
@guarded
def arena(
    workloads: str = typer.Option("lm", help="comma-separated workloads"),
    scales: str = typer.Option(None, help="comma-separated scales (default: each workload's first)"),
    optimizers: str = typer.Option("adamw,sgd,muon,lion", help="comma-separated registry names"),
    budget: str = typer.Option("default", help="preset: smoke (<2 min), default (<10 min), full"),
    trials: int = typer.Option(None, help="trials per optimizer (overrides the preset)"),
    seeds: int = typer.Option(None, help="seeds for each best configuration (overrides the preset)"),
    steps: int = typer.Option(None, help="training steps per run (default: the workload's budget)"),
    protocol: str = typer.Option("random", help="tuning protocol: random (Halton), coordinate (coordinate descent "
                                              "over per-hyperparameter grids) or tpe"),
    horizons: str = typer.Option("1", help="comma-separated multiples of the step budget, each tuned on its own, "
                                           "e.g. 0.5,1,2"),
    workers: int = typer.Option(1, help="parallel worker processes on this machine (one torch thread each)"),
    parametrization: str = typer.Option("standard", help="standard or mup (muP, for width workloads: lm)"),
    schedule: str = typer.Option("cosine", help="schedule with options, e.g. wsd:decay_fraction=0.2"),
    seed: int = typer.Option(0, help="base seed"),
    out: Path = typer.Option(Path("arena-results"), help="output directory"),
    storage: str = typer.Option(None, help="SQLAlchemy URL (default: a SQLite file in --out)"),
    skip_nonfinite_grads: bool = typer.Option(False, help=SKIP_HELP),
) -> None:
    """Tune every optimizer with the same budget, then rank them (rerunning resumes)."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from optarena.arena.report import write_report
    from optarena.arena.runner import ArenaConfig, workload_scales, run_arena

    try:
        try:
            horizon_values = [float(h) for h in _split(horizons) or []]
        except ValueError:
            raise ValueError(f"--horizons must be comma-separated numbers, e.g. 0.5,1,2; got {horizons!r}") from None
        config = ArenaConfig(
            workloads=_split(workloads), scales=_split(scales), optimizers=_split(optimizers), budget=budget,
            trials=trials, seeds=seeds, steps=steps, protocol=protocol, schedule=schedule, seed=seed, out=out,
            storage=storage, horizons=horizon_values, workers=workers, parametrization=parametrization,
            skip_nonfinite_grads=skip_nonfinite_grads,
        )
    except (ValidationError, ValueError) as err:
        _fail(one_line(err))
    _open(config.storage_url())  # reachable, readable and ours, before anything trains
    settings = config.study_settings()
    runs_total = (len(workload_scales(config)) * len(config.horizons) * len(config.optimizers)
                  * (settings["trials"] + settings["seeds"] - 1))
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("runs", total=runs_total)
        steps_bar = progress.add_task("  steps of current run", total=1)

        def on_run(cell, label: str, result) -> None:
            note = "reused" if result.reused else result.status
            loss = f"{result.final_eval_loss:.4f}" if result.final_eval_loss is not None else "—"
            progress.console.print(f"{cell.label} {label}: {note}, final eval loss {loss}")
            progress.advance(bar)

        def on_step(done: int, total: int) -> None:
            progress.update(steps_bar, completed=done, total=total)

        store, study, _ = run_arena(config, on_run=on_run, on_step=on_step)
    scores = write_report(store, study, config.out, settings)
    _print_rankings(scores, settings)
    console.print(f"report: {config.out / 'report.md'} (and report.html)  database: {config.storage_url()}  "
                  f"wall time: {time.perf_counter() - started:.0f} s")
    if _print_failures(scores):
        raise typer.Exit(code=1)


def _print_failures(scores) -> bool:
    """Why runs failed, each reason once with its count; True if a cell ended with no finished trial."""
    from optarena.arena.report import empty_cells, failure_lines

    for problem in scores.problems:
        for line in failure_lines(problem):
            console.print(f"[yellow]{escape(problem.workload)}/{escape(problem.scale)}:[/] {escape(line)}",
                          soft_wrap=True)
    empty = empty_cells(scores)
    for line in empty:
        console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    return bool(empty)


@app.command()
@guarded
def run(
    optimizer: str = typer.Option("adamw", help="registry name"),
    workload: str = typer.Option("lm"),
    scale: str = typer.Option(None, help="default: the workload's first scale"),
    hparams: str = typer.Option("{}", help='JSON overrides, e.g. \'{"lr": 0.003}\''),
    steps: int = typer.Option(None),
    schedule: str = typer.Option("cosine"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("arena-results")),
    storage: str = typer.Option(None),
    skip_nonfinite_grads: bool = typer.Option(False, help=SKIP_HELP),
) -> None:
    """Train one configuration and record it."""
    from pydantic import ValidationError

    from optarena.arena.runner import check_out_dir
    from optarena.arena.store import storage_url
    from optarena.arena.trainer import RunConfig, train
    from optarena.arena.workloads import get_workload
    from optarena.optim import create_optimizer
    from optarena.schedules import make_schedule, parse_schedule

    try:
        try:
            overrides = json.loads(hparams)
        except json.JSONDecodeError as err:
            raise ValueError(f"--hparams must be a JSON object such as '{{\"lr\": 0.003}}', got {hparams!r} ({err})"
                             ) from None
        if not isinstance(overrides, dict):
            raise ValueError(f"--hparams must be a JSON object, got {hparams!r}")
        _check_seed(seed)
        if steps is not None and not 1 <= steps <= 10**9:
            raise ValueError(f"--steps must be an integer from 1 to 10^9, got {steps}")
        check_out_dir(out)
        name, options = parse_schedule(schedule)
        spec = get_workload(workload)
        chosen_scale = scale or spec.scales[0]
        if chosen_scale not in spec.scales:
            raise ValueError(f"unknown {workload} scale {chosen_scale!r}; valid scales: {', '.join(spec.scales)}")
        config = RunConfig(workload=workload, scale=chosen_scale, optimizer=optimizer, hparams=overrides,
                           steps=steps, schedule=name, schedule_options=options, seed=seed,
                           skip_nonfinite_grads=skip_nonfinite_grads)
        total = config.resolved_steps()
        make_schedule(name, total, round(config.warmup_fraction * total), **options)
        _check_hparams(optimizer, overrides)
        with warnings.catch_warnings():  # built only to check the values; train() builds and warns again
            warnings.simplefilter("ignore")
            create_optimizer(optimizer, spec.build(chosen_scale, seed).model, **overrides)
    except (ValidationError, ValueError, TypeError) as err:
        _fail(one_line(err))
    store = _open(storage_url(storage, out))
    with console.status(f"training {optimizer} on {workload}/{chosen_scale}"):
        result = train(config, store, checkpoint_dir=out / "checkpoints")
    loss = f"{result.final_eval_loss:.4f}" if result.final_eval_loss is not None else "—"
    console.print(f"{result.status}{' (reused)' if result.reused else ''}: final eval loss {loss}")
    if result.status == "diverged":
        console.print(f"diverged at step {result.diverged_step}")
    if result.error:
        console.print(escape(result.error))
        raise typer.Exit(code=1)


def _check_hparams(optimizer: str, overrides: dict) -> None:
    """Fail early, with the valid names, on an unknown optimizer or hyperparameter."""
    from optarena.optim import get_spec

    spec = get_spec(optimizer)
    unknown = sorted(set(overrides) - set(spec.defaults) - set(spec.builder_defaults))
    if unknown:
        raise ValueError(f"{optimizer}: unknown hyperparameters {unknown}; valid: "
                         f"{sorted(set(spec.defaults) | set(spec.builder_defaults))}")


@app.command()
@guarded
def report(
    out: Path = typer.Option(Path("arena-results")),
    storage: str = typer.Option(None),
    study: str = typer.Option(None, help="study name (default: the latest)"),
) -> None:
    """Re-render the report and ranking tables from the database (a read-only folder: the tables only)."""
    import os

    from optarena.arena.report import write_report
    from optarena.arena.store import sqlite_path, storage_url

    url = storage_url(storage, out)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        _fail(f"no results database at {url}; run `optarena arena --out {out}` first")
    store = _open(url)
    studies = dict(store.studies())
    if not studies:
        _fail(f"the database {url} holds no arena study yet")
    name = study or list(studies)[-1]
    if name not in studies:
        _fail(f"unknown study {name!r}; known: {', '.join(studies)}")
    writable = os.access(out, os.W_OK) if out.is_dir() else not out.exists()
    if store.read_only or not writable:
        from optarena.arena.scores import score_study

        scores = score_study(store, name, baseline=studies[name].get("baseline", "adamw"))
        _print_rankings(scores, studies[name])
        _print_failures(scores)
        console.print(f"{out} is read-only: the rankings are printed, report.md and report.html not rewritten")
        return
    scores = write_report(store, name, out, studies[name])
    _print_rankings(scores, studies[name])
    _print_failures(scores)
    console.print(f"report: {out / 'report.md'} (and report.html)")


# Commands defined in optarena.commands.<name> are registered below, one line each.
app.command("predict")(guarded(__import__("optarena.commands.predict", fromlist=["predict_command"]).predict_command))
app.command("suggest")(__import__("optarena.commands.suggest", fromlist=["suggest_command"]).suggest_command)
app.command("coord-check")(
    __import__("optarena.commands.coord_check", fromlist=["coord_check_command"]).coord_check_command)
