"""Schedule refinement: a learning-rate schedule derived from a previous run's gradient norms.

Defazio, Cutkosky, Mehta, Mishchenko 2023, "When, Why and How Much? Adaptive Learning Rate
Scheduling by Refinement" (arXiv:2310.07831). From per-step gradient
norms g_1..g_T of a prior run:

1. smooth them with a median filter of width 2 floor(tau T / 2) + 1 (the window is cut
   short at the start and reflect-padded at the end);
2. weights w_t = g_t^-2 (or any per-step weights you pass, e.g. for coordinate-wise methods);
3. eta_t proportional to w_t * sum_{p=t+1}^{T} w_p, so eta_T = 0; rescaled to a peak of 1.

With constant norms eta_t is proportional to T - t: linear decay to 0, reached at the last
step. Warmup and the decay's shape emerge from the norms, so ``warmup`` defaults to 0; if
given, the package's linear warmup ramps to the refined value at step ``warmup``.

When the recorded run has a different length than ``total_steps``, the weights (from the
smoothed norms) are linearly interpolated onto ``total_steps`` points (our choice; the paper refines a
run of the same length). The formula only is used: the authors' code is CC-BY-NC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from optarena.schedules.basic import WARMUP_INIT, Schedule
from optarena.schedules.registry import Option, ScheduleSpec, register_schedule
from optarena.validation import check_int

__all__ = ["median_filter_end_reflect", "refine_from_grad_norms", "refined"]


def median_filter_end_reflect(values: np.ndarray, width: int) -> np.ndarray:
    """Running median of odd ``width``: window cut short at the start, reflect-padded at the end."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd int, got width={width}")
    half = width // 2
    n = len(values)
    if half == 0 or n == 0:
        return values.astype(np.float64).copy()
    tail = values[::-1][1 : half + 1]  # reflect about the last element (it is not repeated)
    padded = np.concatenate([values, tail])
    return np.array([np.median(padded[max(0, i - half) : i + half + 1]) for i in range(n)])


def refine_from_grad_norms(
    grad_norms: Sequence[float] | np.ndarray,
    total_steps: int | None = None,
    tau: float = 0.1,
    weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """The refined multipliers for steps 0..total_steps-1 (peak 1, last step 0).

    ``weights`` replaces the default g^-2 weights (same length as ``grad_norms``); the
    median filter is applied to ``grad_norms`` only, never to given weights.
    """
    if weights is not None:
        raw = np.asarray(weights, dtype=np.float64).ravel()
        name = "weights"
    else:
        raw = np.asarray(grad_norms, dtype=np.float64).ravel()
        name = "grad_norms"
    if raw.size < 2:
        raise ValueError(f"refined needs at least 2 recorded {name}, got {raw.size}")
    if not np.all(np.isfinite(raw)) or np.any(raw <= 0):
        raise ValueError(f"refined {name} must be finite and > 0; bad entries at {np.flatnonzero(~(raw > 0))[:5]}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"refined tau must be in [0, 1], got tau={tau}")
    T = raw.size if total_steps is None else total_steps
    check_int("", "total_steps", T, 0)
    if T < 2:
        raise ValueError(f"refined needs total_steps >= 2, got total_steps={T}")
    if weights is None:
        smoothed = median_filter_end_reflect(raw, 2 * int(tau * raw.size / 2) + 1)
        w = smoothed**-2.0
    else:
        w = raw
    if w.size != T:  # resample onto the new run's steps
        w = np.interp(np.linspace(0.0, 1.0, T), np.linspace(0.0, 1.0, w.size), w)
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{p > t} w_p
    eta = w * tail
    return eta / eta.max()


@dataclass(frozen=True)
class _Refined(Schedule):
    multipliers: tuple[float, ...] = (1.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup >= len(self.multipliers):
            raise ValueError(
                f"total_steps must exceed warmup, got total_steps={len(self.multipliers)}, warmup={self.warmup}"
            )

    def after_warmup(self, step: int) -> float:
        return self.multipliers[min(step, len(self.multipliers) - 1)]

    @property
    def total_steps(self) -> int:
        return len(self.multipliers)


def _load_values(source: str | Path) -> np.ndarray:
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"refined: no grad-norm file at {str(path)!r}")
    if path.suffix == ".npy":
        return np.load(path)
    text = path.read_text()
    if path.suffix == ".json":
        return np.asarray(json.loads(text), dtype=np.float64)
    return np.asarray([float(x) for x in text.replace(",", " ").split()], dtype=np.float64)


def refined(
    total_steps: int,
    warmup: int = 0,
    grad_norms: Sequence[float] | np.ndarray | str | Path | None = None,
    tau: float = 0.1,
    weights: Sequence[float] | np.ndarray | str | Path | None = None,
    warmup_init: float = 0.0,
) -> _Refined:
    """Refined schedule over ``total_steps`` from recorded ``grad_norms`` (or explicit per-step ``weights``).

    ``grad_norms`` / ``weights`` may be arrays or a path to a ``.npy``, ``.json`` or text
    file of numbers (the CLI form: ``refined:grad_norms=norms.txt``). ``tau`` (our default 0.1)
    sets the median-filter width 2 floor(tau T/2)+1 over the T recorded steps.
    """
    if grad_norms is None and weights is None:
        raise ValueError("the refined schedule needs grad_norms (a prior run's per-step gradient norms) or weights")
    if isinstance(grad_norms, (str, Path)):
        grad_norms = _load_values(grad_norms)
    if isinstance(weights, (str, Path)):
        weights = _load_values(weights)
    values = refine_from_grad_norms(grad_norms if grad_norms is not None else weights, total_steps, tau, weights)
    return _Refined(warmup=warmup, warmup_init=warmup_init, multipliers=tuple(float(v) for v in values))


register_schedule(ScheduleSpec(
    "refined", refined,
    dict(
        grad_norms=Option("a prior run's per-step gradient norms (or a .npy/.json/text file)",
                          kind="file_or_numbers"),
        tau=Option("median-filter width as a fraction of the recorded steps", low=0.0, high=1.0),
        weights=Option("explicit per-step weights instead of grad_norms^-2", kind="file_or_numbers"),
        warmup_init=WARMUP_INIT,
    ),
    paper="Defazio, Cutkosky, Mehta, Mishchenko 2023 (arXiv:2310.07831)",
    description="from a prior run's gradient norms",
))
