"""Learning-rate schedules: pure ``step -> multiplier`` callables with warmup, and their registry.

Each schedule is registered as a :class:`ScheduleSpec` (its factory, its options with
defaults and valid values, its paper); ``optarena list schedules`` prints them.
:func:`make_schedule` builds one by name, :func:`parse_schedule` reads the command-line
form ``"wsd:decay_fraction=0.2,shape=1-sqrt"`` (a value with ``/`` is a list:
``"wsd_s:budgets=500/1000"``). Both refuse unknown names (naming the closest), unknown or
repeated options and values out of range.
"""

from __future__ import annotations

from typing import Any

from optarena.schedules.basic import (
    WSD_SHAPES, Schedule, ScheduleLR, as_lambda_lr, constant, cosine, decay_shape, linear,
)
from optarena.schedules.continual import ANNEAL_FORMULAS, InfiniteSchedule, infinite, rewarm
from optarena.schedules.power import power
from optarena.schedules.refined import refine_from_grad_norms, refined
from optarena.schedules.registry import (
    SCHEDULES, Option, ScheduleSpec, get_schedule, list_schedules, register_schedule,
)
from optarena.schedules.wsd import BudgetBranch, wsd, wsd_s, wsd_s_branch_points

__all__ = [
    "ANNEAL_FORMULAS", "SCHEDULES", "WSD_SHAPES", "BudgetBranch", "InfiniteSchedule", "Option", "Schedule",
    "ScheduleLR", "ScheduleSpec", "as_lambda_lr", "constant", "cosine", "decay_shape", "get_schedule", "infinite",
    "linear", "list_schedules", "make_schedule", "parse_schedule", "power", "refine_from_grad_norms", "refined",
    "register_schedule", "rewarm", "wsd", "wsd_s", "wsd_s_branch_points",
]


def make_schedule(name: str, total_steps: int, warmup: int = 0, **options: Any) -> Schedule:
    """Build the schedule registered as ``name`` for a run of ``total_steps``."""
    return get_schedule(name).build(total_steps, warmup, **options)


def _parse_scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_value(text: str) -> Any:
    if "/" in text:  # a list, e.g. budgets=500/1000 (a file path with "/" stays a string)
        items = [_parse_scalar(part.strip()) for part in text.split("/")]
        if all(isinstance(item, (int, float)) for item in items):
            return tuple(items)
    return _parse_scalar(text)


def parse_schedule(spec: str) -> tuple[str, dict[str, Any]]:
    """``"wsd:decay_fraction=0.2,shape=1-sqrt"`` -> ``("wsd", {"decay_fraction": 0.2, "shape": "1-sqrt"})``.

    The name and the options are checked against the registry (see :meth:`ScheduleSpec.check`).
    """
    name, _, rest = spec.partition(":")
    schedule = get_schedule(name.strip())
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"schedule option {item!r} in {spec!r} must look like key=value")
        if key in options:
            raise ValueError(f"schedule option {key!r} is given twice in {spec!r}")
        options[key] = _parse_value(value.strip())
    schedule.check(options)
    return schedule.name, options
