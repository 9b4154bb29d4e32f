"""``optarena coord-check``: muP's coordinate check on the ``lm`` workload, as a PNG.

Records the mean |output| of every module of the byte-level transformer over a few
training steps at several widths, for the standard parametrisation and for muP
(:func:`optarena.scaling.coord_check.coord_check`), and plots one row per parametrisation and one
panel per step. Under muP the curves stay flat across widths.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["coord_check_command", "lm_coord_check"]


def lm_coord_check(widths: list[int], *, parametrization: str, steps: int = 4, optimizer: str = "adamw",
                   lr: float = 1e-2, base_width: int | None = None, seed: int = 0, n_layer: int = 2,
                   include: str | None = None):
    """Run :func:`~optarena.scaling.coord_check.coord_check` on ``lm`` models of the given widths."""
    from optarena.arena.workloads import get_workload
    from optarena.arena.workloads.lm import ByteTransformer, LMConfig
    from optarena.arena.workloads.lm_mup import mup_lm_config, mup_lm_init_
    from optarena.scaling.coord_check import coord_check

    base_width = min(widths) if base_width is None else base_width
    head_dim = LMConfig().head_dim
    for w in [*widths, base_width]:
        if w < 1 or w % head_dim:
            raise ValueError(f"lm widths must be positive multiples of head_dim={head_dim}, got {w}")
    task = get_workload("lm").build("tiny", seed=seed)  # batches and the loss; the model is rebuilt per width

    def build(width: int):
        if parametrization == "mup":
            model = ByteTransformer(LMConfig(n_layer=n_layer, **mup_lm_config(base_width, width)))
            mup_lm_init_(model, base_width)
            return model
        return ByteTransformer(LMConfig(n_layer=n_layer, d_model=width))

    return coord_check(build, widths, task.train_batch, steps=steps, optimizer=optimizer, lr=lr,
                       parametrization=parametrization, base_width=base_width, loss_fn=task.loss,
                       seeds=(seed,), apply_multipliers=False, include=include)


def _check_options(*, steps: int, n_layer: int, include: str | None, optimizer: str, seed: int, out: Path,
                   csv_out: Path | None) -> None:
    """Everything the check would trip over only after its models were built."""
    from optarena.optim import get_spec

    if not 1 <= steps <= 1000:
        raise ValueError(f"--steps must be an integer from 1 to 1000, got {steps}")
    if not 1 <= n_layer <= 64:
        raise ValueError(f"--n-layer must be an integer from 1 to 64, got {n_layer}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"--seed must be an integer from 0 to {2**31 - 1}, got {seed}")
    if include is not None:
        try:
            re.compile(include)
        except re.error as err:
            raise ValueError(f"--include must be a regular expression, got {include!r} ({err})") from None
    get_spec(optimizer)  # an unknown name lists the closest valid ones
    for flag, path in (("--out", out), ("--csv", csv_out)):
        if path is not None and (path.is_dir() or (path.parent.exists() and not path.parent.is_dir())):
            raise ValueError(f"{flag} {str(path)!r} must name a file in an existing folder")
        if path is not None and not path.parent.exists():
            raise ValueError(f"{flag} {str(path)!r}: the folder {str(path.parent)!r} does not exist")


def coord_check_command(
    widths: str = typer.Option("64,128,256,512", help="comma-separated d_model values (multiples of 16)"),
    steps: int = typer.Option(4, help="training steps recorded (step 0 = init)"),
    optimizer: str = typer.Option("adamw", help="registry name"),
    lr: float = typer.Option(1e-2, help="learning rate at the base width (large, to show blow-ups)"),
    parametrization: str = typer.Option("both", help="mup, standard or both"),
    base_width: int = typer.Option(None, help="muP base width (default: the smallest width)"),
    n_layer: int = typer.Option(2, help="transformer blocks"),
    include: str = typer.Option(None, help="regular expression on module names to record"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("coord_check.png"), help="PNG to write"),
    csv_out: Path = typer.Option(None, "--csv", help="also write the tidy table as CSV"),
) -> None:
    """muP coordinate check on the lm workload: mean |activation| per module vs width, per step."""
    from optarena.scaling.coord_check import plot_coord_check

    console = Console()
    try:
        try:
            width_list = [int(w) for w in widths.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"--widths takes comma-separated integers such as 64,128, got {widths!r}") from None
        if len(width_list) < 2:
            raise ValueError(f"--widths needs at least two widths, got {widths!r}")
        if max(width_list) > 8192:
            raise ValueError(f"--widths must be at most 8192, got {max(width_list)}")
        if parametrization not in ("mup", "standard", "both"):
            raise ValueError(f"--parametrization must be mup, standard or both, got {parametrization!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"--lr must be a positive number, got {lr}")
        _check_options(steps=steps, n_layer=n_layer, include=include, optimizer=optimizer, seed=seed, out=out,
                       csv_out=csv_out)
        chosen = ["standard", "mup"] if parametrization == "both" else [parametrization]
        results = []
        with console.status("running the coordinate check"):
            for p in chosen:
                results.append(lm_coord_check(sorted(set(width_list)), parametrization=p, steps=steps,
                                              optimizer=optimizer, lr=lr, base_width=base_width, seed=seed,
                                              n_layer=n_layer, include=include))
    except ValueError as err:
        console.print(f"[bold red]error:[/] {escape(' '.join(str(err).split()))}", soft_wrap=True)
        raise typer.Exit(code=2)

    plot_coord_check(results, str(out), title=f"lm coordinate check: {optimizer}, lr={lr:g}, widths {widths}")
    table = Table(title="slope of log mean|output| vs log width (0 = width-independent)")
    for column in ("parametrization", "step", "median |slope|", "max |slope|", "module with max"):
        table.add_column(column)
    for result in results:
        slopes = result.slopes()
        for step in result.steps:
            values = sorted((abs(v), m) for (m, s), v in slopes.items() if s == step and math.isfinite(v))
            if not values:
                continue
            median = values[len(values) // 2][0]
            table.add_row(result.parametrization, str(step), f"{median:.2f}", f"{values[-1][0]:.2f}", values[-1][1])
    console.print(table)
    if csv_out is not None:
        rows = [row for result in results for row in result.to_rows()]
        with csv_out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    console.print(f"plot: {out}" + (f"  table: {csv_out}" if csv_out else ""))
