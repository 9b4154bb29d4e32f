"""The workload contract: what the trainer needs from a model-and-data problem.

A :class:`Workload` names its scales and budgets and builds a :class:`Task` for a
(scale, seed). Batches are a pure function of (seed, step), so a resumed run sees
exactly the data it would have seen, and nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol

import torch
from torch import nn

__all__ = ["TabulatedWorkload", "Task", "Workload"]

Batch = Any


@dataclass
class Task:
    """A built problem: model, deterministic data and the losses the trainer calls.

    - ``train_batch(step)``: the training batch of that step (deterministic given the seed).
    - ``loss(model, batch)``: scalar training loss (differentiable).
    - ``evaluate(model)``: mean loss over the fixed validation set, under ``torch.no_grad``.
    - ``sampled_loss(model, batch)``: for classification tasks, the loss against labels sampled
      from the model's own predictive distribution (Sophia-G's Gauss–Newton–Bartlett estimator);
      ``None`` where it does not apply.
    - ``tokens_per_step``: examples (or tokens, for language models) consumed per step.
    - ``info``: JSON-serialisable facts recorded with each run (data fingerprint, parameter counts, ...).
    """

    model: nn.Module
    train_batch: Callable[[int], Batch]
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    tokens_per_step: int
    sampled_loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    name: str
    scales: tuple[str, ...]
    metric: str  # what evaluate() returns, e.g. "validation cross-entropy (nats/byte)"

    def build(self, scale: str, seed: int) -> Task: ...

    def default_steps(self, scale: str) -> int: ...

    def target(self, scale: str) -> float | None:
        """The loss a tuned AdamW reaches at the default budget (for steps-to-target), if known."""
        ...


class TabulatedWorkload:
    """Base for workloads whose budgets (and targets, once measured) are per-scale tables.

    Subclasses set ``name``, ``scales``, ``steps_by_scale`` and, where a tuned AdamW value has
    been measured, ``targets_by_scale``; unknown scales fail with the valid ones.
    """

    name: str
    scales: tuple[str, ...]
    steps_by_scale: ClassVar[Mapping[str, int]]
    targets_by_scale: ClassVar[Mapping[str, float]] = {}

    def check_scale(self, scale: str) -> None:
        if scale not in self.scales:
            raise ValueError(f"unknown {self.name} scale {scale!r}; valid scales: {', '.join(self.scales)}")

    def default_steps(self, scale: str) -> int:
        self.check_scale(scale)
        return self.steps_by_scale[scale]

    def target(self, scale: str) -> float | None:
        self.check_scale(scale)
        return self.targets_by_scale.get(scale)
