"""Learning-rate schedules: pure ``step -> multiplier`` callables with warmup.

Each name maps to a factory taking ``total_steps`` and ``warmup`` plus its own options;
:func:`parse_schedule` reads the CLI form ``"wsd:decay_fraction=0.2,shape=1-sqrt"``
(a value with ``/`` is a list: ``"wsd_s:budgets=500/1000"``).

=========  ==========================================================================
constant   1 after warmup
linear     linear decay to ``final`` (Defazio et al. 2023)
cosine     half-cosine to the floor ``final``
wsd        warmup–stable–decay, decay shapes linear / cosine / 1-sqrt / exponential
wsd_s      WSD-S: one run, a decayed model at each budget (Wen et al. 2024)
power      Power scheduler: lr from tokens seen and batch size (Shen et al. 2024)
infinite   warmup, cosine cool-down, constant, anneal on demand (Singh et al. 2025)
rewarm     continual pre-training: re-warm to ``peak``, then decay (Ibrahim et al. 2024)
refined    from a prior run's gradient norms (Defazio et al. 2023)
=========  ==========================================================================
"""

from __future__ import annotations

from typing import Any, Callable

from optarena.schedules.basic import (
    WSD_SHAPES, Schedule, ScheduleLR, as_lambda_lr, constant, cosine, decay_shape, linear,
)
from optarena.schedules.continual import ANNEAL_FORMULAS, InfiniteSchedule, infinite, rewarm
from optarena.schedules.power import power
from optarena.schedules.refined import refine_from_grad_norms, refined
from optarena.schedules.wsd import BudgetBranch, wsd, wsd_s, wsd_s_branch_points

__all__ = [
    "ANNEAL_FORMULAS", "SCHEDULES", "WSD_SHAPES", "BudgetBranch", "InfiniteSchedule", "Schedule", "ScheduleLR",
    "as_lambda_lr", "constant", "cosine", "decay_shape", "infinite", "linear", "make_schedule", "parse_schedule",
    "power", "refine_from_grad_norms", "refined", "rewarm", "wsd", "wsd_s", "wsd_s_branch_points",
]


def _constant(total_steps: int, warmup: int = 0, **kw: Any) -> Schedule:
    if total_steps <= warmup:
        raise ValueError(f"total_steps must exceed warmup, got total_steps={total_steps}, warmup={warmup}")
    return constant(warmup=warmup, **kw)


# name -> factory(total_steps, warmup, **options)
SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "linear": linear,
    "cosine": cosine,
    "wsd": wsd,
    "wsd_s": wsd_s,
    "power": power,
    "infinite": infinite,
    "rewarm": rewarm,
    "refined": refined,
}


def make_schedule(name: str, total_steps: int, warmup: int = 0, **options: Any) -> Schedule:
    """Build the schedule registered as ``name`` for a run of ``total_steps``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(sorted(SCHEDULES))}")
    try:
        return SCHEDULES[name](total_steps=total_steps, warmup=warmup, **options)
    except TypeError as err:  # unknown option names, or a value of the wrong type
        raise ValueError(f"schedule {name!r}: {err}") from None


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
    """``"wsd:decay_fraction=0.2,shape=1-sqrt"`` -> ``("wsd", {"decay_fraction": 0.2, "shape": "1-sqrt"})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"schedule option {item!r} in {spec!r} must look like key=value")
        options[key.strip()] = _parse_value(value.strip())
    if name.strip() not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r} in {spec!r}; valid: {', '.join(sorted(SCHEDULES))}")
    return name.strip(), options
