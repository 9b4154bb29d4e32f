"""What an optimizer may ask of the training loop, as one typed protocol.

Most optimizers need nothing but ``loss.backward()`` and ``step()``. A few need the loop to
call them at other points of a step; they inherit :class:`TrainingHooks` (next to
``torch.optim.Optimizer``) and override the hooks they use, and a loop reaches every
optimizer through :func:`hooks_of`, which gives a no-op :class:`TrainingHooks` for the rest::

    hooks = hooks_of(optimizer)
    hooks.observe_batch_size(batch_size)       # before the first step, and whenever it changes
    hooks.train()
    for batch in batches:
        hooks.prepare_step()                   # before the forward pass
        if hooks.needs_backward:
            loss = loss_fn(batch)
            loss.backward()
        else:                                  # the optimizer evaluates the loss itself
            with torch.no_grad():
                loss = loss_fn(batch)
        hooks.observe_loss(loss.item())        # after the loss is known, before step()
        optimizer.step() if hooks.needs_backward else optimizer.step(lambda: loss_fn(batch))
        if hooks.hessian_step_due():           # after step(), with the step's batch
            optimizer.zero_grad(set_to_none=True)
            hooks.update_hessian(lambda: loss_fn(batch), lambda: sampled_loss_fn(batch),
                                 batch_size=batch_size)
        optimizer.zero_grad(set_to_none=True)
    hooks.eval()                               # before evaluating or saving the weights
    ...
    hooks.train()                              # back to training

Who uses which hook: Drop-Muon (arXiv:2510.02239) draws the layers it updates in
:meth:`~TrainingHooks.prepare_step`, so the frozen layers' gradients are never computed;
MKOR-H (arXiv:2306.01685) decides from :meth:`~TrainingHooks.observe_loss` when to leave its
second-order phase; Sophia (arXiv:2305.14342) refreshes its diagonal Hessian estimate in
:meth:`~TrainingHooks.update_hessian` every few steps; Schedule-Free AdamW (arXiv:2405.15682)
swaps its averaged weights in and out with :meth:`~TrainingHooks.eval` /
:meth:`~TrainingHooks.train`. ``needs_backward = False`` is for zeroth-order methods, which
only evaluate the loss through the closure given to ``step``; :meth:`~TrainingHooks.observe_batch_size`
is for methods whose update depends on the batch size (adaptive batch-size schedules).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

__all__ = ["LossClosure", "TrainingHooks", "hooks_of"]

LossClosure = Callable[[], torch.Tensor]


class TrainingHooks:
    """The training-loop hooks, each a no-op by default; override the ones an optimizer needs.

    A mixin without state: ``class MyOptimizer(torch.optim.Optimizer, TrainingHooks)``.
    """

    needs_backward: ClassVar[bool] = True
    """False: the loop skips ``backward()`` and calls ``step(closure)`` with a closure that
    returns the loss of the step's batch (evaluated under ``torch.no_grad``)."""

    def train(self) -> None:
        """Called before the first training step and after every evaluation."""

    def eval(self) -> None:
        """Called before the weights are evaluated (or saved as the run's model)."""

    def observe_batch_size(self, batch_size: int) -> None:
        """Called before the first step, and again whenever the examples per step change."""

    def prepare_step(self) -> Any:
        """Called before the forward pass of every step; the return value is ignored."""

    def observe_loss(self, loss: float) -> None:
        """Called with the step's training loss after the forward pass and before ``step()``."""

    def hessian_step_due(self) -> bool:
        """Asked after every ``step()``: whether :meth:`update_hessian` should run now."""
        return False

    def update_hessian(self, loss_closure: LossClosure, sampled_loss_closure: LossClosure | None = None, *,
                       batch_size: int | None = None) -> Any:
        """Called when :meth:`hessian_step_due`, with closures that recompute the step's loss.

        ``sampled_loss_closure`` computes the loss against labels sampled from the model's own
        predictions (``None`` where the task has none); ``batch_size`` counts the examples (or
        tokens) per step. Gradients are zeroed before the call. The return value is ignored.
        """


_NO_HOOKS = TrainingHooks()


def hooks_of(optimizer: torch.optim.Optimizer) -> TrainingHooks:
    """The optimizer itself if it implements :class:`TrainingHooks`, else a shared no-op instance."""
    return optimizer if isinstance(optimizer, TrainingHooks) else _NO_HOOKS
