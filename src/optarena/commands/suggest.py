"""``optarena suggest --params N --tokens D``: lr, batch size and weight decay from each scaling rule."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["parse_count", "suggest_command"]

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(flag: str, text: str) -> float:
    """``"125M"``, ``"2.5B"``, ``"1e9"`` -> a float > 0; anything else fails naming ``flag`` and the value."""
    raw = text.strip()
    scale = _SUFFIXES.get(raw[-1:].lower(), 1.0) if raw else 1.0
    number = raw[:-1] if scale != 1.0 else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{flag} must be a positive number such as 1.2e9 or 125M, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag} must be a positive number such as 1.2e9 or 125M, got {text!r}")
    return value


def _read_fits(path: Path) -> dict:
    """Fit every hyperparameter column of a CSV with columns ``params``, ``tokens`` and e.g. ``lr``."""
    from optarena.scaling.rules import fit_hyperparameter_scaling

    if not path.exists():
        raise ValueError(f"--fit file {str(path)!r} does not exist")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"params", "tokens"} <= set(rows[0]):
        header = list(rows[0]) if rows else []
        raise ValueError(f"--fit file {str(path)!r} needs a header with 'params', 'tokens' and hyperparameter "
                         f"columns (lr, batch_tokens, batch_sequences, weight_decay); got {header}")
    columns = [c for c in rows[0] if c in ("lr", "batch_tokens", "batch_sequences", "weight_decay")]
    if not columns:
        raise ValueError(f"--fit file {str(path)!r} has no lr, batch_tokens, batch_sequences or weight_decay column")
    fits = {}
    for column in columns:
        points = [(parse_count("params", r["params"]), parse_count("tokens", r["tokens"]), float(r[column]))
                  for r in rows if r.get(column) not in (None, "")]
        fits[column] = fit_hyperparameter_scaling(points, column)
    return fits


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"


def suggest_command(
    params: str = typer.Option(..., "--params", help="non-embedding parameters N, e.g. 1.2e9 or 125M"),
    tokens: str = typer.Option(..., "--tokens", help="training tokens D, e.g. 2.5e10 or 25B"),
    seq_len: int = typer.Option(2048, "--seq-len", help="tokens per sequence (to express batches in sequences)"),
    batch_size: Optional[float] = typer.Option(None, "--batch-size", help="batch in sequences for the Power rule "
                                                                          "(default: Step Law's)"),
    base_width: Optional[int] = typer.Option(None, "--base-width", help="width the hyperparameters were tuned at"),
    width: Optional[int] = typer.Option(None, "--width", help="target width (with --base-width)"),
    base_lr: Optional[float] = typer.Option(None, "--base-lr", help="lr tuned at --base-width"),
    base_weight_decay: float = typer.Option(0.1, "--base-weight-decay", help="weight decay tuned at --base-width"),
    wd_exponent: float = typer.Option(0.5, "--wd-exponent", help="wd ~ width^exponent (0.5: Fan et al.; 1: mup)"),
    fit: Optional[Path] = typer.Option(None, "--fit", help="CSV of measured optima (params, tokens, lr, ...) to "
                                                          "fit h = A N^B D^C + E"),
) -> None:
    """Suggest lr, batch size and weight decay from each scaling rule, side by side."""
    from optarena.scaling.rules import suggest

    console = Console()
    try:
        n = parse_count("--params", params)
        d = parse_count("--tokens", tokens)
        if seq_len < 1:
            raise ValueError(f"--seq-len must be a positive integer, got {seq_len}")
        if batch_size is not None and not (math.isfinite(batch_size) and batch_size > 0):
            raise ValueError(f"--batch-size must be a positive number, got {batch_size}")
        for flag, value in (("--base-width", base_width), ("--width", width)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if (base_width is None) != (width is None):
            raise ValueError(f"--base-width and --width go together, got --base-width={base_width}, --width={width}")
        if base_lr is not None and not (math.isfinite(base_lr) and base_lr > 0):
            raise ValueError(f"--base-lr must be a positive number, got {base_lr}")
        if not (math.isfinite(base_weight_decay) and base_weight_decay >= 0):
            raise ValueError(f"--base-weight-decay must be a number >= 0, got {base_weight_decay}")
        fits = _read_fits(fit) if fit is not None else None
        rows = suggest(n, d, seq_len=seq_len, batch_size=batch_size, base_width=base_width, width=width,
                       base_lr=base_lr, base_weight_decay=base_weight_decay, wd_exponent=wd_exponent, fits=fits)
    except ValueError as err:
        console.print(f"[bold red]error:[/] {escape(' '.join(str(err).split()))}", soft_wrap=True)
        raise typer.Exit(code=2)

    table = Table(title=f"Suggested hyperparameters for N = {n:.3g} non-embedding parameters, D = {d:.3g} tokens")
    for column in ("rule", "lr", "batch (tokens)", "batch (sequences)", "weight decay", "paper", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.rule, _fmt(row.lr), _fmt(row.batch_tokens), _fmt(row.batch_sequences),
                      _fmt(row.weight_decay), f"arXiv:{row.paper.arxiv}", row.note)
    console.print(table)
