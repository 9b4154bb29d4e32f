"""The ``optarena`` command line: ``arena | run | report | list`` and the commands of optarena.commands."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Optimizers from the literature, compared fairly.")
console = Console()


@app.command("list")
def list_command() -> None:
    """List registered optimizers with family, state memory and paper."""
    from optarena.optim import get_spec, list_optimizers

    table = Table(title="optarena optimizers")
    for col in ("name", "family", "state bytes/param (fp32)", "paper"):
        table.add_column(col)
    for name in list_optimizers():
        spec = get_spec(name)
        table.add_row(name, spec.family, f"{spec.state_bytes:g}", str(spec.paper))
    console.print(table)


# Commands defined in optarena.commands.<name> are registered below, one line each.
