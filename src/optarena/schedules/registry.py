"""The registry of learning-rate schedules: one :class:`ScheduleSpec` per name.

A spec names the factory ``factory(total_steps, warmup, **options)``, each option's valid
values (:class:`Option`; its default is the factory's) and the paper. :func:`get_schedule`
answers a misspelled name with the closest registered ones; :meth:`ScheduleSpec.check`
refuses unknown option names, values of the wrong kind and values out of range before
the factory runs, naming the schedule, the option and what would be valid.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from optarena.validation import check_choice, check_int, check_number, describe_range, is_number

__all__ = ["Option", "SCHEDULES", "ScheduleSpec", "get_schedule", "list_schedules", "register_schedule"]

KINDS = ("number", "int", "choice", "numbers", "file_or_numbers")


@dataclass(frozen=True)
class Option:
    """The valid values of one option of a schedule (its default is the factory's).

    ``kind``: ``"number"`` (a finite real in the range ``low``..``high``, ends closed unless
    ``*_open``), ``"int"`` (an int >= ``low``), ``"choice"`` (one of ``choices``),
    ``"numbers"`` (one number or a sequence of them, each in the range; ``a/b`` on the
    command line) or ``"file_or_numbers"`` (a path to a file of numbers, or the numbers).
    ``None`` is accepted where it is the factory's default ("not set": the factory decides).
    """

    help: str
    kind: str = "number"
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Option kind must be one of {KINDS}, got kind={self.kind!r}")

    def describe(self) -> str:
        """The valid values, as error messages and ``optarena list schedules`` state them."""
        if self.kind == "choice":
            return f"one of {self.choices}"
        if self.kind == "int":
            return f"an int {describe_range(self.low)}"
        what = f"{describe_range(self.low, self.high, self.low_open, self.high_open)}"
        if self.kind == "number":
            return f"a number {what}"
        if self.kind == "numbers":
            return f"numbers {what}"
        return "a file of numbers, or the numbers"

    def check(self, owner: str, name: str, value: Any, default: Any = None) -> None:
        if value is None and default is None:
            return
        bounds = dict(low_open=self.low_open, high_open=self.high_open)
        if self.kind == "number":
            check_number(owner, name, value, self.low, self.high, **bounds)
        elif self.kind == "int":
            check_int(owner, name, value, int(self.low))
        elif self.kind == "choice":
            check_choice(owner, name, value, self.choices)
        elif self.kind == "numbers":
            for item in (value,) if is_number(value) else _sequence(owner, name, value):
                check_number(owner, name, item, self.low, self.high, **bounds)
        elif not isinstance(value, (str, Path)):
            for item in _sequence(owner, name, value):
                check_number(owner, name, item)


def _sequence(owner: str, name: str, value: Any) -> list[Any]:
    try:
        items = list(value)
    except TypeError:
        items = []
    if isinstance(value, (str, bytes)) or not items:
        raise ValueError(f"{owner} {name} must be a non-empty sequence of numbers, got {name}={value!r}")
    return items


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule: its name, ``factory(total_steps, warmup, **options)``, its options and its paper."""

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Option]
    paper: str
    description: str
    defaults: Mapping[str, Any] = field(init=False)  # option -> the factory's default

    def __post_init__(self) -> None:
        if self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"schedule names are lower-case with underscores, got {self.name!r}")
        parameters = list(inspect.signature(self.factory).parameters.values())
        if [p.name for p in parameters[:2]] != ["total_steps", "warmup"]:
            raise ValueError(f"schedule {self.name!r}: the factory must take (total_steps, warmup, **options)")
        defaults = {p.name: p.default for p in parameters[2:]}
        if set(defaults) != set(self.options) or inspect.Parameter.empty in defaults.values():
            raise ValueError(
                f"schedule {self.name!r}: options {sorted(self.options)} must be the factory's keyword arguments "
                f"with defaults: {sorted(defaults)}"
            )
        object.__setattr__(self, "defaults", MappingProxyType({k: defaults[k] for k in self.options}))

    def check(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown option names and invalid values (the message names the closest valid name)."""
        owner = f"schedule {self.name!r}"
        for key, value in options.items():
            option = self.options.get(key)
            if option is None:
                close = difflib.get_close_matches(key, list(self.options), n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                valid = ", ".join(sorted(self.options)) or "none"
                raise ValueError(f"{owner} has no option {key!r}.{hint} Valid options: {valid}")
            option.check(owner, key, value, self.defaults[key])

    def build(self, total_steps: int, warmup: int = 0, **options: Any) -> Any:
        """The schedule for a run of ``total_steps`` with ``warmup`` steps, after checking ``options``."""
        self.check(options)
        return self.factory(total_steps=total_steps, warmup=warmup, **options)


_REGISTRY: dict[str, ScheduleSpec] = {}
SCHEDULES: Mapping[str, ScheduleSpec] = MappingProxyType(_REGISTRY)  # name -> spec, read-only


def register_schedule(spec: ScheduleSpec) -> ScheduleSpec:
    """Add ``spec`` to the registry; names are unique."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a schedule named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_schedules() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_schedule(name: str) -> ScheduleSpec:
    """The spec registered under ``name``; unknown names list the closest valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown schedule {name!r}.{hint} Registered: {', '.join(list_schedules())}") from None
