"""Warmup–stable–decay (WSD) and its multi-budget variant WSD-S.

WSD (Hu et al., MiniCPM, arXiv:2404.06395; Hägele et al., arXiv:2405.18392): warm up,
hold the peak rate (the "main branch"), and decay over the last ``decay_fraction`` of the
run with one of :data:`WSD_SHAPES`.

WSD-S (Wen, Li, Wang, Hall, Liang, Ma 2024, "Understanding Warmup-Stable-Decay Learning
Rates: A River Valley Loss Landscape Perspective", arXiv:2410.05192): one run serves
several budgets T_1 < T_2 < ... < T_K. Before each budget T_k the rate decays over its last
``round(decay_fraction * T_k)`` steps; at T_k the decayed weights are the budget-T_k model,
and training resumes at the peak rate *from those decayed weights* (WSD would roll back
to the pre-decay checkpoint instead). Decay phases are thus reused by later budgets.

Step convention (as everywhere in :mod:`optarena.schedules`): ``schedule(s)`` is the
multiplier of update ``s`` (0-based), so "budget T" is the model after updates 0..T-1.
The decay for budget T covers updates ``decay_start .. T-1``; like linear and cosine,
the value ``final`` is reached at step T itself, which WSD-S never uses because the
rate is back at the peak there.

Choice not fixed by the paper: the decay length of each budget is a fraction of that
budget (so each branch looks like the tail of a WSD run of that length), and a decay
that would start before the previous budget ends is an error rather than being shortened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from optarena.schedules.basic import FINAL, WARMUP_INIT, WSD_SHAPES, _Decaying, check_fraction, decay_shape
from optarena.schedules.registry import Option, ScheduleSpec, register_schedule
from optarena.validation import check_choice

__all__ = ["BudgetBranch", "wsd", "wsd_s", "wsd_s_branch_points"]


@dataclass(frozen=True)
class _WSD(_Decaying):
    """Warmup–stable–decay: hold 1 after warmup, decay over the last ``decay_fraction`` of steps."""

    decay_fraction: float = 0.2
    shape: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("decay_fraction", self.decay_fraction)
        check_choice("", "shape", self.shape, WSD_SHAPES)

    @property
    def decay_start(self) -> int:
        start = self.total_steps - round(self.decay_fraction * self.total_steps)
        return max(self.warmup, start)

    def after_warmup(self, step: int) -> float:
        if step < self.decay_start:
            return 1.0
        return decay_shape(self.shape, self.progress(step, self.decay_start), self.final)


def wsd(
    total_steps: int,
    warmup: int = 0,
    decay_fraction: float = 0.2,
    shape: str = "linear",
    final: float = 0.0,
    warmup_init: float = 0.0,
) -> _WSD:
    """Warmup–stable–decay: 1 until ``total_steps - round(decay_fraction * total_steps)``, then decay.

    Multiplier in the decay: ``decay_shape(shape, t, final)`` with t = (s - decay_start)/(total_steps - decay_start).
    """
    return _WSD(
        warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final,
        decay_fraction=decay_fraction, shape=shape,
    )


@dataclass(frozen=True)
class BudgetBranch:
    """Where the decay branch of one budget lies in a WSD-S run.

    ``decay_start``: first update of the decay; ``budget``: the decay ends after update
    ``budget - 1``, and the weights then are the model for this budget; ``resume_step``:
    the update at which the peak rate resumes from those decayed weights (None for the
    last budget, which ends the run).
    """

    budget: int
    decay_start: int
    resume_step: int | None

    @property
    def decay_steps(self) -> int:
        return self.budget - self.decay_start


def _as_int_budgets(budgets: Any) -> tuple[int, ...]:
    if isinstance(budgets, (int, float)) and not isinstance(budgets, bool):
        budgets = (budgets,)
    if isinstance(budgets, str) or not isinstance(budgets, Sequence) or len(budgets) == 0:
        raise ValueError(f"budgets must be a non-empty sequence of step counts, got budgets={budgets!r}")
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b != int(b) or b <= 0:
            raise ValueError(f"budgets must be positive integers (steps), got {b!r} in budgets={budgets!r}")
        out.append(int(b))
    if sorted(set(out)) != out:
        raise ValueError(f"budgets must be strictly increasing, got budgets={tuple(out)}")
    return tuple(out)


def wsd_s_branch_points(
    budgets: Sequence[int], decay_fraction: float = 0.2, warmup: int = 0
) -> tuple[BudgetBranch, ...]:
    """The decay branches of a WSD-S run that yields a model for each of ``budgets``.

    >>> [(b.decay_start, b.budget, b.resume_step) for b in wsd_s_branch_points([100, 300], 0.2)]
    [(80, 100, 100), (240, 300, None)]
    """
    budgets = _as_int_budgets(budgets)
    check_fraction("decay_fraction", decay_fraction)
    if budgets[0] <= warmup:
        raise ValueError(f"the first budget must exceed warmup, got budgets={budgets}, warmup={warmup}")
    branches, previous_end = [], 0
    for i, budget in enumerate(budgets):
        decay = round(decay_fraction * budget)
        start = max(warmup, budget - decay)
        if start < previous_end:
            raise ValueError(
                f"WSD-S budget {budget}: its decay ({decay} steps at decay_fraction={decay_fraction}) would start "
                f"at step {start}, before the previous budget {previous_end} ends; space the budgets further "
                "apart or lower decay_fraction"
            )
        branches.append(BudgetBranch(budget, start, budget if i < len(budgets) - 1 else None))
        previous_end = budget
    return tuple(branches)


@dataclass(frozen=True)
class _WSDS(_Decaying):
    """WSD-S over ``budgets`` (the last one is ``total_steps``); see the module docstring."""

    budgets: tuple[int, ...] = ()
    decay_fraction: float = 0.2
    shape: str = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("", "shape", self.shape, WSD_SHAPES)
        if not self.budgets or self.budgets[-1] != self.total_steps:
            raise ValueError(f"WSD-S budgets must end at total_steps={self.total_steps}, got budgets={self.budgets}")
        self.branch_points()  # validates spacing and decay_fraction

    def branch_points(self) -> tuple[BudgetBranch, ...]:
        return wsd_s_branch_points(self.budgets, self.decay_fraction, self.warmup)

    def after_warmup(self, step: int) -> float:
        for branch in self.branch_points():
            if step < branch.decay_start:
                return 1.0
            if step < branch.budget:
                t = (step - branch.decay_start) / branch.decay_steps
                return decay_shape(self.shape, t, self.final)
        return decay_shape(self.shape, 1.0, self.final)  # past the last budget: hold the end value


def wsd_s(
    total_steps: int,
    warmup: int = 0,
    budgets: Sequence[int] | int | None = None,
    budget_fractions: Sequence[float] | float | None = None,
    decay_fraction: float = 0.2,
    shape: str = "linear",
    final: float = 0.0,
    warmup_init: float = 0.0,
) -> _WSDS:
    """WSD-S with a model at each budget, in one run of ``total_steps``.

    Args:
        budgets: intermediate budgets in steps (``total_steps`` is always the last budget and is
            added if missing); on the command line ``budgets=500/1000``.
        budget_fractions: the same as fractions of ``total_steps`` (``budget_fractions=0.25/0.5``);
            give one of ``budgets`` / ``budget_fractions``. Neither: budgets at 1/2 and 1.
        decay_fraction: each budget's decay length as a fraction of that budget.
        shape, final: decay shape (one of :data:`WSD_SHAPES`) and the multiplier it decays to.

    The returned schedule's ``branch_points()`` lists where each decay starts and ends.
    """
    if budgets is not None and budget_fractions is not None:
        raise ValueError("give budgets (steps) or budget_fractions, not both")
    if budget_fractions is not None:
        fractions = budget_fractions if isinstance(budget_fractions, Sequence) else (budget_fractions,)
        for f in fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
                raise ValueError(
                    f"budget_fractions must be in (0, 1], got {f!r} in budget_fractions={budget_fractions!r}"
                )
        budgets = [round(f * total_steps) for f in fractions]
    elif budgets is None:
        budgets = [round(0.5 * total_steps)]
    steps = list(_as_int_budgets(budgets))
    if steps[-1] > total_steps:
        raise ValueError(f"budgets must not exceed total_steps={total_steps}, got budgets={tuple(steps)}")
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return _WSDS(
        warmup=warmup, warmup_init=warmup_init, total_steps=total_steps, final=final,
        budgets=tuple(steps), decay_fraction=decay_fraction, shape=shape,
    )


DECAY_FRACTION = Option("fraction of the run (of each budget, for wsd_s) spent decaying", low=0.0, high=1.0)
SHAPE = Option("decay shape", kind="choice", choices=WSD_SHAPES)

register_schedule(ScheduleSpec(
    "wsd", wsd, dict(decay_fraction=DECAY_FRACTION, shape=SHAPE, final=FINAL, warmup_init=WARMUP_INIT),
    paper="Hu et al., MiniCPM (arXiv:2404.06395); Hägele et al. (arXiv:2405.18392)",
    description="warmup-stable-decay with a linear, cosine, 1-sqrt or exponential decay",
))
register_schedule(ScheduleSpec(
    "wsd_s", wsd_s,
    dict(
        budgets=Option("intermediate budgets in steps, e.g. 500/1000", kind="numbers", low=0.0, low_open=True),
        budget_fractions=Option("the budgets as fractions of the run, e.g. 0.25/0.5", kind="numbers",
                                low=0.0, high=1.0, low_open=True),
        decay_fraction=DECAY_FRACTION, shape=SHAPE, final=FINAL, warmup_init=WARMUP_INIT,
    ),
    paper="Wen et al. 2024 (arXiv:2410.05192)",
    description="one run, a decayed model at each budget, training resumed from the decayed weights",
))
