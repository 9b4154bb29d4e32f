"""The workload contract: what the trainer needs from a model-and-data problem.

A :class:`Workload` names its scales and budgets and builds a :class:`Task` for a
(scale, seed). Batches are a pure function of (seed, step), so a resumed run sees
exactly the data it would have seen, and nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConfiguredWorkload", "MupWorkload", "TabulatedWorkload", "Task", "Workload", "classification_losses",
           "seeded_model"]

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class Task:
    """A built problem: model, deterministic data and the losses the trainer calls.

    - ``train_batch(step)``: the training batch of that step (deterministic given the seed).
    - ``loss(model, batch)``: scalar training loss (differentiable).
    - ``evaluate(model)``: the validation metrics, under ``torch.no_grad``: always ``"loss"``
      (the workload's ``metric``), plus any others it measures (``"accuracy"``, ...).
    - ``sampled_loss(model, batch)``: for classification tasks, the loss against labels sampled
      from the model's own predictive distribution (Sophia-G's Gauss–Newton–Bartlett estimator);
      ``None`` where it does not apply.
    - ``forward_stats(model)``: statistics of the model's last training forward pass (``lm``'s
      ``max_attn_logit`` and ``logit_rms``); ``None`` where the model records none.
    - ``tokens_per_step``: examples (or tokens, for language models) consumed per step.
    - ``info``: JSON-serialisable facts recorded with each run (data fingerprint, parameter counts, ...).
    """

    model: nn.Module
    train_batch: Callable[[int], Batch]
    loss: LossFn
    evaluate: Callable[[nn.Module], dict[str, float]]
    tokens_per_step: int
    sampled_loss: LossFn | None = None
    forward_stats: Callable[[nn.Module], dict[str, float]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    name: str
    scales: tuple[str, ...]
    metric: str  # what evaluate()["loss"] is, e.g. "validation cross-entropy (nats/byte)"

    def build(self, scale: str, seed: int) -> Task: ...

    def default_steps(self, scale: str) -> int: ...

    def target(self, scale: str) -> float | None:
        """The loss a tuned AdamW reaches at the default budget (for steps-to-target), if known."""
        ...


@runtime_checkable
class MupWorkload(Protocol):
    """A workload with a width, which builds its model in muP (Yang et al., Tensor Programs V, arXiv:2203.03466).

    ``build_mup`` returns the task and the :class:`~optarena.scaling.mup_plan.MupPlan` that
    :func:`~optarena.scaling.mup.create_mup_optimizer` takes; the base width defaults to the
    first scale's.
    """

    def build_mup(self, scale: str, seed: int, base_width: int | None = None,
                  **overrides: Any) -> tuple[Task, Any]: ...


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

    def check_no_options(self, options: Mapping[str, Any]) -> None:
        """For workloads without options: fail on any ``workload_options``."""
        if options:
            raise ValueError(f"the {self.name} workload takes no options, got {sorted(options)}")

    def default_steps(self, scale: str) -> int:
        self.check_scale(scale)
        return self.steps_by_scale[scale]

    def target(self, scale: str) -> float | None:
        self.check_scale(scale)
        return self.targets_by_scale.get(scale)


class ConfiguredWorkload(TabulatedWorkload):
    """A tabulated workload whose scales are presets of a frozen dataclass of options.

    Subclasses set ``config_class`` and ``presets`` (``{scale: field overrides}``);
    :meth:`config` applies a run's ``workload_options`` on top of the preset.
    """

    config_class: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]

    def config(self, scale: str | None = None, **overrides: Any) -> Any:
        """The ``config_class`` of ``scale`` (default: the first scale) with ``overrides`` applied."""
        scale = self.scales[0] if scale is None else scale
        self.check_scale(scale)
        valid = {f.name for f in fields(self.config_class)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown {self.config_class.__name__} field(s) {unknown}; "
                             f"valid fields: {', '.join(sorted(valid))}")
        return replace(self.config_class(), **{**self.presets[scale], **overrides})


def seeded_model(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def classification_losses(
    forward: Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[LossFn, LossFn]:
    """The cross-entropy ``loss`` and ``sampled_loss`` of a classifier.

    ``forward(model, batch)`` returns ``(logits, targets)`` with logits of shape (N, classes);
    ``sampled_loss`` is the cross-entropy against classes drawn from the model's own softmax.
    """

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits, targets = forward(model, batch)
        return F.cross_entropy(logits, targets)

    def sampled_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits, _ = forward(model, batch)
        with torch.no_grad():
            sampled = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(1)
        return F.cross_entropy(logits, sampled)

    return loss, sampled_loss
