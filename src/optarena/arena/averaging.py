"""Weight averaging evaluated in place of the raw weights: EMA, or a uniform average of the last k checkpoints.

Averaging can stand in for learning-rate decay: Sanyal et al., "Early Weight Averaging meets
High Learning Rates for LLM Pre-training" (arXiv:2306.03241); Hägele et al., "Scaling Laws and
Compute-Optimal Training beyond Fixed Training Durations" (arXiv:2405.18392). The trainer calls
:meth:`WeightAverager.update` after every step, :meth:`snapshot` before every evaluation and
evaluates inside :meth:`swapped_in`.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["AVERAGING_MODES", "WeightAverager"]

AVERAGING_MODES = ("none", "ema", "uniform")


class WeightAverager:
    """``mode="ema"``: avg <- d·avg + (1−d)·θ every step; ``mode="uniform"``: mean of the last ``k`` snapshots."""

    def __init__(self, model: nn.Module, mode: str, ema_decay: float = 0.99, last_k: int = 4) -> None:
        if mode not in ("ema", "uniform"):
            raise ValueError(f"averaging mode must be 'ema' or 'uniform', got {mode!r}")
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got ema_decay={ema_decay}")
        if last_k < 1:
            raise ValueError(f"last_k must be >= 1, got last_k={last_k}")
        self.mode, self.ema_decay = mode, ema_decay
        self.params = [p for p in model.parameters()]
        self.ema = [p.detach().clone() for p in self.params] if mode == "ema" else None
        self.snapshots: deque[list[torch.Tensor]] = deque(maxlen=last_k)

    @torch.no_grad()
    def update(self) -> None:
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.ema_decay)

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.mode == "uniform":
            self.snapshots.append([p.detach().clone() for p in self.params])

    @torch.no_grad()
    def averaged(self) -> list[torch.Tensor]:
        if self.ema is not None:
            return self.ema
        if not self.snapshots:
            return [p.detach() for p in self.params]
        total = [t.clone() for t in self.snapshots[0]]
        for snap in list(self.snapshots)[1:]:
            torch._foreach_add_(total, snap)
        torch._foreach_div_(total, len(self.snapshots))
        return total

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.averaged()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state of another model or mode raises ``ValueError``."""
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError(f"averager state of another mode: this averager's mode is {self.mode!r}")
        if self.ema is not None:
            for mine, saved in zip(self.ema, state["ema"], strict=True):
                mine.copy_(saved)
        for snapshot in state["snapshots"]:
            if [t.shape for t in snapshot] != [p.shape for p in self.params]:
                raise ValueError("averager snapshot of another model: its tensor shapes differ from the parameters'")
        self.snapshots.clear()
        self.snapshots.extend(state["snapshots"])
