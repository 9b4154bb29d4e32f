"""Power scheduler: a learning rate set by the number of tokens seen and the batch size.

Shen, Stallone, Mishra, Zhang, Tan, Prasad, Meza Soria, Cox, Panda 2024, "Power Scheduler:
A Batch Size and Token Number Agnostic Learning Rate Scheduler" (arXiv:2408.13359).
Under WSD the best peak rate follows eta_opt ~ beta a T^b (beta: batch
size in sequences, T: tokens), so the scheduler uses, with n the tokens seen,

    eta_power(n) = min(eta_max, beta a n^b)
    warmup (n < N_w):   eta = (n / N_w) eta_power(N_w)
    stable:             eta = eta_power(n)
    decay (last N_d):   eta = f(n) eta_power(N - N_d)   (f decays 1 -> final; PowerLM: exponential)

This is an *absolute* learning-rate rule, while optarena schedules return multipliers of
each param group's lr. :func:`power` therefore returns ``eta / base_lr``: set the
optimizer's lr to ``base_lr`` (default ``lr_max``) and the product is the paper's rate.
Other param groups keep their ratio to ``base_lr`` (e.g. Muon's AdamW groups).

Deviations: tokens seen before update ``s`` are ``n = s * batch_size * seq_len`` (the
paper counts tokens continuously); at n = 0 the rate is eta_max. The warmup ramp is the
package's linear warmup to ``eta_power(N_w)``, i.e. (s+1)/warmup of it. The decay uses the
package's shapes (:data:`WSD_SHAPES`); ``exponential`` is geometric to max(final, 1e-3), not
to exactly 0. Defaults a=4, b=-0.51, lr_max=0.02 are PowerLM-3B's (with muP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optarena.schedules.basic import FINAL, WARMUP_INIT, WSD_SHAPES, _Decaying, check_fraction, decay_shape
from optarena.schedules.registry import Option, ScheduleSpec, register_schedule
from optarena.validation import check_choice, check_number, check_positive

__all__ = ["power"]


@dataclass(frozen=True)
class _Power(_Decaying):
    batch_size: int = 0
    seq_len: int = 0
    a: float = 4.0
    b: float = -0.51
    lr_max: float = 0.02
    base_lr: float = 0.02
    decay_fraction: float = 0.1
    shape: str = "exponential"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"the power schedule needs {name} > 0 (batch_size: sequences per step, the paper's beta; "
                    f"seq_len: tokens per sequence, 1 for non-sequence data), got {name}={value!r}"
                )
        check_positive("", "a", self.a)
        check_number("power exponent", "b", self.b, -10.0, 0.0, low_open=True, high_open=True)
        check_positive("", "lr_max", self.lr_max)
        check_positive("", "base_lr", self.base_lr)
        check_fraction("decay_fraction", self.decay_fraction)
        check_choice("", "shape", self.shape, WSD_SHAPES)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def decay_start(self) -> int:
        return max(self.warmup, self.total_steps - round(self.decay_fraction * self.total_steps))

    def lr_power(self, tokens: float) -> float:
        """eta_power(n) = min(lr_max, batch_size * a * n^b); lr_max at n = 0."""
        if tokens <= 0:
            return self.lr_max
        return min(self.lr_max, self.batch_size * self.a * math.pow(tokens, self.b))

    def absolute_lr(self, step: int) -> float:
        """The paper's learning rate at update ``step`` (multiplier times ``base_lr``)."""
        return self(step) * self.base_lr

    def after_warmup(self, step: int) -> float:
        start = self.decay_start
        if step < start:
            return self.lr_power(step * self.tokens_per_step) / self.base_lr
        peak = self.lr_power(start * self.tokens_per_step)
        return decay_shape(self.shape, self.progress(step, start), self.final) * peak / self.base_lr


def power(
    total_steps: int,
    warmup: int = 0,
    batch_size: int | None = None,
    seq_len: int | None = None,
    a: float = 4.0,
    b: float = -0.51,
    lr_max: float = 0.02,
    base_lr: float | None = None,
    decay_fraction: float = 0.1,
    shape: str = "exponential",
    final: float = 0.0,
    warmup_init: float = 0.0,
) -> _Power:
    """Power scheduler as multipliers of ``base_lr`` (default ``lr_max``); see the module docstring.

    Args:
        batch_size: sequences per step (the paper's beta); required.
        seq_len: tokens per sequence (1 when a "token" is a sample); required.
        a, b: the power law beta a n^b; lr_max: its cap.
        base_lr: the optimizer lr the multipliers refer to.
        decay_fraction, shape, final: the final decay over the last fraction of ``total_steps``.
    """
    return _Power(
        warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final,
        batch_size=batch_size if batch_size is not None else 0, seq_len=seq_len if seq_len is not None else 0,
        a=a, b=b, lr_max=lr_max, base_lr=lr_max if base_lr is None else base_lr,
        decay_fraction=decay_fraction, shape=shape,
    )


register_schedule(ScheduleSpec(
    "power", power,
    dict(
        batch_size=Option("sequences per step (the paper's beta); required", kind="int", low=1),
        seq_len=Option("tokens per sequence (1 when a token is a sample); required", kind="int", low=1),
        a=Option("coefficient of the power law", low=0.0, low_open=True),
        b=Option("exponent of the power law", low=-10.0, high=0.0, low_open=True, high_open=True),
        lr_max=Option("cap of the learning rate", low=0.0, low_open=True),
        base_lr=Option("the optimizer lr the multipliers refer to (default lr_max)", low=0.0, low_open=True),
        decay_fraction=Option("fraction of the run spent decaying", low=0.0, high=1.0),
        shape=Option("decay shape", kind="choice", choices=WSD_SHAPES),
        final=FINAL, warmup_init=WARMUP_INIT,
    ),
    paper="Shen et al. 2024 (arXiv:2408.13359)",
    description="learning rate from tokens seen and batch size",
))
