"""Learning-rate schedules as pure, picklable ``step -> multiplier`` callables.

A schedule returns the factor applied to each param group's base learning rate, so the
ratio between groups (Muon's matrix lr vs its AdamW lr) is kept. Every schedule here
starts with an optional linear warmup from ``warmup_init`` to 1 over ``warmup`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["Schedule", "as_lambda_lr", "constant", "cosine", "linear", "wsd", "WSD_SHAPES"]

WSD_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")


def _check_nonneg_int(name: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{name} must be an int >= 0, got {name}={value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {name}={value}")


@dataclass(frozen=True)
class Schedule:
    """Base: linear warmup, then :meth:`after_warmup` (1.0 here, i.e. constant)."""

    warmup: int = 0
    warmup_init: float = 0.0

    def __post_init__(self) -> None:
        _check_nonneg_int("warmup", self.warmup)
        _check_fraction("warmup_init", self.warmup_init)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got step={step}")
        if step < self.warmup:
            return self.warmup_init + (1.0 - self.warmup_init) * (step + 1) / self.warmup
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        return 1.0

    def as_lambda_lr(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> LambdaLR:
        return as_lambda_lr(optimizer, self, last_epoch)


@dataclass(frozen=True)
class _Decaying(Schedule):
    """Warmup, then decay from 1 to ``final`` at ``total_steps``; held at ``final`` after."""

    total_steps: int = 1
    final: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_nonneg_int("total_steps", self.total_steps)
        if self.total_steps <= self.warmup:
            raise ValueError(
                f"total_steps must exceed warmup, got total_steps={self.total_steps}, warmup={self.warmup}"
            )
        _check_fraction("final", self.final)

    def progress(self, step: int, start: int) -> float:
        """Fraction in [0, 1] of the way from ``start`` to ``total_steps``."""
        return min(1.0, (step - start) / max(1, self.total_steps - start))


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
    """Multiplier at fraction ``t`` in [0, 1] of a decay from 1 to ``final``."""
    if shape == "linear":
        return 1.0 + (final - 1.0) * t
    if shape == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    if shape == "1-sqrt":  # Hägele et al. 2024 (arXiv:2405.18392)
        return final + (1.0 - final) * (1.0 - math.sqrt(t))
    if shape == "exponential":  # geometric from 1 to max(final, 1e-3)
        floor = max(final, 1e-3)
        return floor**t
    raise ValueError(f"decay shape must be one of {WSD_SHAPES}, got {shape!r}")


@dataclass(frozen=True)
class _WSD(_Decaying):
    """Warmup–stable–decay: hold 1 after warmup, decay over the last ``decay_fraction`` of steps."""

    decay_fraction: float = 0.2
    shape: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("decay_fraction", self.decay_fraction)
        if self.shape not in WSD_SHAPES:
            raise ValueError(f"WSD shape must be one of {WSD_SHAPES}, got shape={self.shape!r}")

    @property
    def decay_start(self) -> int:
        start = self.total_steps - round(self.decay_fraction * self.total_steps)
        return max(self.warmup, start)

    def after_warmup(self, step: int) -> float:
        if step < self.decay_start:
            return 1.0
        return decay_shape(self.shape, self.progress(step, self.decay_start), self.final)


def constant(warmup: int = 0, warmup_init: float = 0.0) -> Schedule:
    """1 after a linear warmup."""
    return Schedule(warmup=warmup, warmup_init=warmup_init)


def linear(total_steps: int, warmup: int = 0, final: float = 0.0, warmup_init: float = 0.0) -> Schedule:
    """Linear decay from 1 to ``final`` at ``total_steps`` (Defazio et al. 2023, arXiv:2310.07831)."""
    return _Linear(warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final)


def cosine(total_steps: int, warmup: int = 0, final: float = 0.0, warmup_init: float = 0.0) -> Schedule:
    """Half-cosine from 1 to ``final`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983)."""
    return _Cosine(warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final)


def wsd(
    total_steps: int,
    warmup: int = 0,
    decay_fraction: float = 0.2,
    shape: str = "linear",
    final: float = 0.0,
    warmup_init: float = 0.0,
) -> Schedule:
    """Warmup–stable–decay (Hu et al., MiniCPM, arXiv:2404.06395; Hägele et al., arXiv:2405.18392)."""
    return _WSD(
        warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final,
        decay_fraction=decay_fraction, shape=shape,
    )


def as_lambda_lr(optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1) -> LambdaLR:
    """A ``LambdaLR`` applying ``schedule`` to every param group (ratios between groups kept)."""
    if not callable(schedule):
        raise ValueError(f"schedule must be callable step -> multiplier, got {schedule!r}")
    return LambdaLR(optimizer, schedule, last_epoch=last_epoch)
