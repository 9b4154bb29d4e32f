"""Schedules for continual pre-training: re-warming on new data, and the infinite schedule.

**Rewarm** (Gupta et al. 2023, "Continual Pre-Training of Large Language Models: How to
(re)warm your model?", arXiv:2308.04014; Ibrahim et al. 2024, "Simple and Scalable
Strategies to Continually Pre-train Large Language Models", arXiv:2403.08763): at the start
of a new data phase, warm up linearly from ``warmup_init`` (typically the previous phase's
final multiplier) to ``peak``, hold it, and decay to ``final`` over the last
``decay_fraction`` of the phase (default 1: decay right after the warmup, the papers'
cosine re-warm/re-decay). Steps count from the start of the new phase: build one schedule
(and one ``LambdaLR``) per phase.

**Infinite** (Ibrahim et al. 2024, arXiv:2403.08763; Singh, Janson, Mehrbod, Ibrahim, Rish,
Belilovsky, Thérien 2025, "Beyond Cosine Decay: On the effectiveness of Infinite Learning
Rate Schedule for Continual Pre-training", arXiv:2503.02844)::

    warmup    n < N_w:              linear 0 -> 1
    cool-down N_w <= n < N_w+N_cd:  level + (1-level)/2 (1 + cos(pi (n-N_w)/N_cd))
    constant  until N_d:            level                (as long as needed, across tasks)
    anneal    n >= N_d:             level (final/level)^((n-N_d)/t_a), held at final after t_a steps

Ambiguity: a re-implementation quotes the paper's Eq. 1 exponent as (n-N_d)/(t_a+N_d),
which reaches ``final`` only after t_a + N_d annealing steps, i.e. the anneal length
depends on when it starts. We default to (n-N_d)/t_a (``anneal_formula="length"``), which
reaches ``final`` exactly after ``t_a`` steps as the text describes; ``anneal_formula="eq1"``
gives the other reading. "Anneal on demand": :meth:`InfiniteSchedule.anneal_at` returns
the same schedule with an annealing phase from a chosen step; a running ``LambdaLR`` picks it
up with ``scheduler.lr_lambdas = [new] * len(scheduler.lr_lambdas)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from optarena.schedules.basic import (
    FINAL, WARMUP_INIT, WSD_SHAPES, Schedule, _Decaying, check_fraction, decay_shape,
)
from optarena.schedules.registry import Option, ScheduleSpec, register_schedule
from optarena.validation import check_choice, check_int, check_number, check_positive

__all__ = ["ANNEAL_FORMULAS", "InfiniteSchedule", "infinite", "rewarm"]

ANNEAL_FORMULAS = ("length", "eq1")


@dataclass(frozen=True)
class _Rewarm(_Decaying):
    peak: float = 1.0
    decay_fraction: float = 1.0
    shape: str = "cosine"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("", "peak", self.peak)
        if self.final > self.peak:
            raise ValueError(f"rewarm final must be <= peak, got final={self.final}, peak={self.peak}")
        check_fraction("decay_fraction", self.decay_fraction)
        check_choice("", "shape", self.shape, WSD_SHAPES)

    @property
    def decay_start(self) -> int:
        return max(self.warmup, self.total_steps - round(self.decay_fraction * self.total_steps))

    def after_warmup(self, step: int) -> float:
        start = self.decay_start
        if step < start:
            return self.peak
        # decay_shape goes 1 -> final; scale it to go peak -> final
        return self.peak * decay_shape(self.shape, self.progress(step, start), self.final / self.peak)


def rewarm(
    total_steps: int,
    warmup: int = 0,
    peak: float = 1.0,
    warmup_init: float = 0.0,
    decay_fraction: float = 1.0,
    shape: str = "cosine",
    final: float = 0.0,
) -> _Rewarm:
    """Re-warm from ``warmup_init`` to ``peak`` over ``warmup`` steps, then decay to ``final`` (see module docstring).

    Decay with ``shape`` in [decay_start, total_steps), decay_start = max(warmup, total_steps - round(decay_fraction
    * total_steps)): multiplier = peak * decay_shape(shape, t, final / peak).
    """
    return _Rewarm(
        warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final,
        peak=peak, decay_fraction=decay_fraction, shape=shape,
    )


@dataclass(frozen=True)
class InfiniteSchedule(Schedule):
    """Warmup, cosine cool-down to ``level``, constant, optional exponential anneal (module docstring).

    All lengths are in steps; ``anneal_start=None`` means no annealing (yet).
    """

    cooldown_steps: int = 0
    level: float = 0.125
    anneal_start: int | None = None
    anneal_steps: int = 0
    final: float = 1e-3
    anneal_formula: str = "length"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("", "cooldown_steps", self.cooldown_steps, 0)
        check_number("", "level", self.level, 0.0, 1.0, low_open=True)
        check_positive("", "final", self.final)
        if self.final > self.level:
            raise ValueError(f"infinite final must be <= level, got final={self.final}, level={self.level}")
        check_choice("", "anneal_formula", self.anneal_formula, ANNEAL_FORMULAS)
        if self.anneal_start is not None:
            check_int("", "anneal_start", self.anneal_start, 0)
            if self.anneal_start < self.warmup + self.cooldown_steps:
                raise ValueError(
                    f"anneal_start must be >= warmup + cooldown_steps = {self.warmup + self.cooldown_steps}, "
                    f"got anneal_start={self.anneal_start}"
                )
            check_int("", "anneal_steps", self.anneal_steps, 0)
            if self.anneal_steps == 0:
                raise ValueError("anneal_steps must be > 0 when anneal_start is set")

    def after_warmup(self, step: int) -> float:
        cooldown_end = self.warmup + self.cooldown_steps
        if step < cooldown_end:
            t = (step - self.warmup) / self.cooldown_steps
            return self.level + (1.0 - self.level) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.anneal_start is None or step < self.anneal_start:
            return self.level
        length = self.anneal_steps if self.anneal_formula == "length" else self.anneal_steps + self.anneal_start
        exponent = min(1.0, (step - self.anneal_start) / length)
        return self.level * (self.final / self.level) ** exponent

    def anneal_at(self, start: int, steps: int) -> InfiniteSchedule:
        """This schedule with its annealing phase starting at step ``start`` and lasting ``steps``."""
        return dataclasses.replace(self, anneal_start=start, anneal_steps=steps)


def infinite(
    total_steps: int,
    warmup: int = 0,
    cooldown_fraction: float = 0.2,
    level: float = 0.125,
    anneal_fraction: float = 0.1,
    final: float = 1e-3,
    anneal_formula: str = "length",
    warmup_init: float = 0.0,
) -> InfiniteSchedule:
    """The infinite schedule laid out over ``total_steps`` (fractions are of ``total_steps``).

    Cool-down over ``round(cooldown_fraction * total_steps)`` steps after warmup to ``level``;
    anneal over the last ``round(anneal_fraction * total_steps)`` steps to ``final``
    (``anneal_fraction=0``: never anneal; use :meth:`InfiniteSchedule.anneal_at` later).
    Defaults (level 1/8, final 1e-3, 20% cool-down, 10% anneal) are ours, not the paper's.
    """
    check_int("", "total_steps", total_steps, 0)
    if total_steps <= warmup:
        raise ValueError(f"total_steps must exceed warmup, got total_steps={total_steps}, warmup={warmup}")
    check_fraction("cooldown_fraction", cooldown_fraction)
    check_fraction("anneal_fraction", anneal_fraction)
    cooldown = round(cooldown_fraction * total_steps)
    anneal = round(anneal_fraction * total_steps)
    if warmup + cooldown + anneal > total_steps:
        raise ValueError(
            f"warmup ({warmup}) + cool-down ({cooldown}) + anneal ({anneal}) steps exceed total_steps={total_steps}; "
            "lower cooldown_fraction or anneal_fraction"
        )
    return InfiniteSchedule(
        warmup=warmup, warmup_init=warmup_init, cooldown_steps=cooldown, level=level,
        anneal_start=total_steps - anneal if anneal > 0 else None, anneal_steps=anneal, final=final,
        anneal_formula=anneal_formula,
    )


register_schedule(ScheduleSpec(
    "infinite", infinite,
    dict(
        cooldown_fraction=Option("fraction of the run in the cosine cool-down", low=0.0, high=1.0),
        level=Option("the constant multiplier after the cool-down", low=0.0, high=1.0, low_open=True),
        anneal_fraction=Option("fraction of the run in the final anneal (0: never)", low=0.0, high=1.0),
        final=Option("multiplier at the end of the anneal", low=0.0, high=1.0, low_open=True),
        anneal_formula=Option("exponent of the anneal", kind="choice", choices=ANNEAL_FORMULAS),
        warmup_init=WARMUP_INIT,
    ),
    paper="Ibrahim et al. 2024 (arXiv:2403.08763); Singh et al. 2025 (arXiv:2503.02844)",
    description="warmup, cosine cool-down, constant, anneal on demand",
))
register_schedule(ScheduleSpec(
    "rewarm", rewarm,
    dict(
        peak=Option("multiplier the warmup climbs to", low=0.0, low_open=True),
        warmup_init=WARMUP_INIT,
        decay_fraction=Option("fraction of the phase spent decaying", low=0.0, high=1.0),
        shape=Option("decay shape", kind="choice", choices=WSD_SHAPES),
        final=FINAL,
    ),
    paper="Gupta et al. 2023 (arXiv:2308.04014); Ibrahim et al. 2024 (arXiv:2403.08763)",
    description="continual pre-training: re-warm to peak, then decay",
))
