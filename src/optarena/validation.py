"""Checks of hyperparameters and options, shared by the optimizers and the schedules.

Every check raises ``ValueError`` with one message shape: who is being configured, the
argument, what would be valid, and the value given, e.g.
``Lion lr must be a finite number >= 0, got lr=inf``. Numbers must be real (``bool`` is
not a number here) and finite: ``nan`` and ``inf`` are refused everywhere.

:func:`check_hparams` validates arguments by their conventional name (``lr``, ``betas``,
``eps``, ``weight_decay``, ``momentum``, ...; see :data:`CONVENTIONS`), so a constructor
states its checks in one line and an argument means the same thing in every optimizer.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "CONVENTIONS",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_conventional",
    "check_hparams",
    "check_int",
    "check_nonnegative",
    "check_number",
    "check_positive",
    "check_unit_interval",
    "describe_range",
    "is_number",
]

INF = math.inf


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an int to Python, never a hyperparameter value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe_range(low: float = -INF, high: float = INF, low_open: bool = False, high_open: bool = False) -> str:
    """``">= 0"``, ``"> 0"``, ``"in [0, 1)"``, ... (the valid range as error messages state it)."""
    if high == INF:
        return f"{'>' if low_open else '>='} {low:g}" if low > -INF else "any"
    if low == -INF:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _fail(owner: str, name: str, what: str, value: Any) -> None:
    prefix = f"{owner} " if owner else ""
    raise ValueError(f"{prefix}{name} must be {what}, got {name}={value!r}")


def check_number(
    owner: str, name: str, value: Any, low: float = -INF, high: float = INF, *,
    low_open: bool = False, high_open: bool = False,
) -> None:
    """``value`` is a finite real number in the range from ``low`` to ``high`` (closed unless ``*_open``)."""
    ok = is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        _fail(owner, name, f"a finite number {describe_range(low, high, low_open, high_open)}", value)


def check_nonnegative(owner: str, name: str, value: Any) -> None:
    check_number(owner, name, value, 0.0)


def check_positive(owner: str, name: str, value: Any) -> None:
    check_number(owner, name, value, 0.0, low_open=True)


def check_unit_interval(owner: str, name: str, value: Any) -> None:
    """In [0, 1): momentum and EMA coefficients."""
    check_number(owner, name, value, 0.0, 1.0, high_open=True)


def check_int(owner: str, name: str, value: Any, low: int = 0, high: int | None = None) -> None:
    """An ``int`` (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
        high is not None and value > high
    ):
        _fail(owner, name, f"an int {describe_range(low, INF if high is None else high)}", value)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        _fail(owner, name, f"one of {tuple(choices)}", value)


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(owner, name, "True or False", value)


def check_betas(owner: str, name: str, value: Any, count: int = 2) -> None:
    """``count`` EMA coefficients, each a finite number in [0, 1)."""
    if not (isinstance(value, (tuple, list)) and len(value) == count and all(
        is_number(b) and 0.0 <= b < 1.0 for b in value
    )):
        size = "a pair" if count == 2 else f"{count} numbers"
        _fail(owner, name, f"{size} of finite numbers in [0, 1)", value)


# argument name -> its check, for arguments whose meaning is the same in every optimizer
CONVENTIONS: dict[str, Callable[[str, str, Any], None]] = {
    "lr": check_nonnegative,
    "weight_decay": check_nonnegative,
    "eps": check_nonnegative,
    "momentum": check_unit_interval,
    "nesterov": check_bool,
    "betas": check_betas,
    "adamw_betas": check_betas,
    "adamw_eps": check_nonnegative,
}


def check_hparams(owner: str, **values: Any) -> None:
    """Check each keyword by its conventional meaning (:data:`CONVENTIONS`); unknown names are an error.

    >>> check_hparams("Lion", lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    """
    for name, value in values.items():
        try:
            check = CONVENTIONS[name]
        except KeyError:
            raise TypeError(f"check_hparams has no convention for {name!r}; known: {sorted(CONVENTIONS)}") from None
        check(owner, name, value)


def check_conventional(owner: str, values: Mapping[str, Any]) -> None:
    """Check the entries of ``values`` that have a convention (:data:`CONVENTIONS`); leave the others alone."""
    check_hparams(owner, **{k: v for k, v in values.items() if k in CONVENTIONS})
