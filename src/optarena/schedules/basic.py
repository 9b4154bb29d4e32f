"""Learning-rate schedules as pure, picklable ``step -> multiplier`` callables.

A schedule returns the factor applied to each param group's base learning rate, so the
ratio between groups (Muon's matrix lr vs its AdamW lr) is kept. Every schedule here
starts with an optional linear warmup from ``warmup_init`` to the schedule's value at the
end of warmup (1 for the plain schedules) over ``warmup`` steps.

Schedules are frozen dataclasses whose fields are plain numbers, strings and tuples: they
pickle, compare by value, and ``LambdaLR.state_dict()`` stores them as plain data.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from optarena.schedules.registry import Option, ScheduleSpec, register_schedule
from optarena.validation import check_int, check_number

__all__ = [
    "FINAL", "WARMUP_INIT", "Schedule", "ScheduleLR", "WSD_SHAPES", "as_lambda_lr", "check_fraction", "constant",
    "cosine", "decay_shape", "linear",
]

WSD_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")

# options that most schedules share
WARMUP_INIT = Option("multiplier the warmup starts from", low=0.0, high=1.0)
FINAL = Option("multiplier reached at the end of the decay", low=0.0, high=1.0)


def check_fraction(name: str, value: Any) -> None:
    """A number in [0, 1] (fractions of a run, multipliers)."""
    check_number("", name, value, 0.0, 1.0)


@dataclass(frozen=True)
class Schedule:
    """Base: linear warmup, then :meth:`after_warmup` (1.0 here, i.e. constant).

    Subclasses override :meth:`after_warmup`; the warmup ramps to ``after_warmup(warmup)``,
    so a schedule whose post-warmup value is not 1 (rewarm peak, refined, Power) joins
    its warmup without a jump.
    """

    warmup: int = 0
    warmup_init: float = 0.0

    def __post_init__(self) -> None:
        check_int("", "warmup", self.warmup, 0)
        check_fraction("warmup_init", self.warmup_init)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got step={step}")
        if step < self.warmup:
            target = self.after_warmup(self.warmup)
            return self.warmup_init + (target - self.warmup_init) * (step + 1) / self.warmup
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        return 1.0

    def values(self, steps: int) -> list[float]:
        """The multipliers of steps ``0 .. steps-1`` (e.g. for plotting or loss-curve prediction)."""
        return [self(step) for step in range(steps)]

    def as_lambda_lr(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> LambdaLR:
        return as_lambda_lr(optimizer, self, last_epoch)


@dataclass(frozen=True)
class _Decaying(Schedule):
    """Warmup, then decay from 1 to ``final`` at ``total_steps``; held at ``final`` after."""

    total_steps: int = 1
    final: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("", "total_steps", self.total_steps, 0)
        if self.total_steps <= self.warmup:
            raise ValueError(
                f"total_steps must exceed warmup, got total_steps={self.total_steps}, warmup={self.warmup}"
            )
        check_fraction("final", self.final)

    def progress(self, step: int, start: int) -> float:
        """Fraction in [0, 1] of the way from ``start`` to ``total_steps``."""
        return min(1.0, max(0.0, (step - start) / max(1, self.total_steps - start)))


@dataclass(frozen=True)
class _Linear(_Decaying):
    def after_warmup(self, step: int) -> float:
        return 1.0 + (self.final - 1.0) * self.progress(step, self.warmup)


@dataclass(frozen=True)
class _Cosine(_Decaying):
    def after_warmup(self, step: int) -> float:
        t = self.progress(step, self.warmup)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))


def decay_shape(shape: str, t: float, final: float) -> float:
    """Multiplier at fraction ``t`` in [0, 1] of a decay from 1 to ``final``.

    ``linear``: 1 + (final-1) t.  ``cosine``: final + (1-final)(1+cos(pi t))/2.
    ``1-sqrt``: final + (1-final)(1-sqrt(t)) (Hägele et al. 2024, arXiv:2405.18392).
    ``exponential``: max(final, 1e-3)^t, a geometric decay; it cannot reach 0, so a
    ``final`` of 0 decays to 1e-3 instead.
    """
    if shape == "linear":
        return 1.0 + (final - 1.0) * t
    if shape == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    if shape == "1-sqrt":
        return final + (1.0 - final) * (1.0 - math.sqrt(t))
    if shape == "exponential":
        return max(final, 1e-3) ** t
    raise ValueError(f"decay shape must be one of {WSD_SHAPES}, got {shape!r}")


def constant(warmup: int = 0, warmup_init: float = 0.0) -> Schedule:
    """1 after a linear warmup."""
    return Schedule(warmup=warmup, warmup_init=warmup_init)


def linear(total_steps: int, warmup: int = 0, final: float = 0.0, warmup_init: float = 0.0) -> Schedule:
    """Linear decay from 1 after warmup to ``final`` at ``total_steps`` (Defazio et al. 2023, arXiv:2310.07831).

    Multiplier at step s >= warmup: 1 + (final - 1) (s - warmup) / (total_steps - warmup).
    """
    return _Linear(warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final)


def cosine(total_steps: int, warmup: int = 0, final: float = 0.0, warmup_init: float = 0.0) -> Schedule:
    """Half-cosine from 1 to the floor ``final`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983).

    Multiplier at step s >= warmup: final + (1 - final)(1 + cos(pi t))/2, t = (s - warmup)/(total_steps - warmup).
    """
    return _Cosine(warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final)


class ScheduleLR(LambdaLR):
    """``LambdaLR`` whose state also names each schedule's class.

    Plain ``LambdaLR`` saves a callable's fields but restores them into whatever object the
    new scheduler holds, so resuming with a different schedule object (say the default
    cosine instead of the saved WSD) would keep the wrong formula with the saved fields.
    Here the saved class is restored too. Only classes already imported are looked up,
    and only :class:`Schedule` subclasses are accepted.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["schedule_types"] = [
            f"{type(fn).__module__}:{type(fn).__qualname__}" if isinstance(fn, Schedule) else None
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        types = state_dict.pop("schedule_types", None) or []
        for index, (name, fields) in enumerate(zip(types, state_dict.get("lr_lambdas", []))):
            cls = _imported_schedule_class(name) if name and fields is not None else None
            if cls is not None and type(self.lr_lambdas[index]) is not cls:
                self.lr_lambdas[index] = object.__new__(cls)  # fields are filled in by LambdaLR below
        super().load_state_dict(state_dict)


def _imported_schedule_class(name: str) -> type | None:
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, Schedule) else None


def as_lambda_lr(optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1) -> ScheduleLR:
    """A ``LambdaLR`` (:class:`ScheduleLR`) applying ``schedule`` to every param group.

    Each group's lr is its own initial lr times the multiplier, so ratios between groups
    are kept. ``state_dict()`` stores the schedule's class and fields, and
    ``load_state_dict`` restores them, so a resumed run continues the same schedule.
    """
    if not callable(schedule):
        raise ValueError(f"schedule must be callable step -> multiplier, got {schedule!r}")
    return ScheduleLR(optimizer, schedule, last_epoch=last_epoch)


def _constant(total_steps: int, warmup: int = 0, warmup_init: float = 0.0) -> Schedule:
    if total_steps <= warmup:
        raise ValueError(f"total_steps must exceed warmup, got total_steps={total_steps}, warmup={warmup}")
    return constant(warmup=warmup, warmup_init=warmup_init)


register_schedule(ScheduleSpec(
    "constant", _constant, dict(warmup_init=WARMUP_INIT), paper="",
    description="1 after warmup",
))
register_schedule(ScheduleSpec(
    "linear", linear, dict(final=FINAL, warmup_init=WARMUP_INIT),
    paper="Defazio, Cutkosky, Mehta, Mishchenko 2023 (arXiv:2310.07831)",
    description="linear decay to final",
))
register_schedule(ScheduleSpec(
    "cosine", cosine, dict(final=FINAL, warmup_init=WARMUP_INIT),
    paper="Loshchilov & Hutter, SGDR (arXiv:1608.03983)",
    description="half-cosine to the floor final",
))
