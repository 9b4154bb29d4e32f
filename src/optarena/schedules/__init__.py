"""Learning-rate schedules: pure ``step -> multiplier`` callables with warmup.

Each name maps to a factory taking ``total_steps`` and ``warmup`` plus its own options;
:func:`parse_schedule` reads the CLI form ``"wsd:decay_fraction=0.2,shape=1-sqrt"``.
"""

from __future__ import annotations

from typing import Any, Callable

from optarena.schedules.basic import WSD_SHAPES, Schedule, as_lambda_lr, constant, cosine, linear, wsd

__all__ = [
    "SCHEDULES", "WSD_SHAPES", "Schedule", "as_lambda_lr", "constant", "cosine", "linear", "make_schedule",
    "parse_schedule", "wsd",
]


def _constant(total_steps: int, warmup: int = 0, **kw: Any) -> Schedule:
    return constant(warmup=warmup, **kw)


# name -> factory(total_steps, warmup, **options)
SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "linear": linear,
    "cosine": cosine,
    "wsd": wsd,
}


def make_schedule(name: str, total_steps: int, warmup: int = 0, **options: Any) -> Schedule:
    """Build the schedule registered as ``name`` for a run of ``total_steps``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(sorted(SCHEDULES))}")
    try:
        return SCHEDULES[name](total_steps=total_steps, warmup=warmup, **options)
    except TypeError as err:  # unknown option names
        raise ValueError(f"schedule {name!r}: {err}") from None


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


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
