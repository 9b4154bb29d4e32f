"""Multi-tensor helpers shared by the optimizers: grouping, gradient checks, state, the AdamW rule."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

import torch

__all__ = [
    "CopiesItsAttributes", "GroupwiseOptimizer", "adamw_rule", "check_float", "collect_grads", "group_by_device_dtype",
    "groups_with_grads", "run_closure", "zeros_state",
]


def check_float(optimizer_name: str, p: torch.Tensor) -> None:
    """Refuse gradients this library does not support, with a clear message."""
    if p.grad is not None and p.grad.is_sparse:
        raise RuntimeError(f"{optimizer_name} does not support sparse gradients; use a dense embedding")
    if torch.is_complex(p):
        raise RuntimeError(f"{optimizer_name} does not support complex parameters (got dtype {p.dtype})")


def collect_grads(optimizer_name: str, params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters that have a gradient, and their gradients; zero-element tensors have nothing to update."""
    with_grad, grads = [], []
    for p in params:
        if p.grad is None or p.numel() == 0:
            continue
        check_float(optimizer_name, p)
        with_grad.append(p)
        grads.append(p.grad)
    return with_grad, grads


def groups_with_grads(
    optimizer: torch.optim.Optimizer,
) -> Iterator[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]:
    """Each param group that has parameters with a gradient: ``(group, params, grads)``."""
    for group in optimizer.param_groups:
        params, grads = collect_grads(type(optimizer).__name__, group["params"])
        if params:
            yield group, params, grads


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """torch.optim's closure contract: ``step`` runs under no_grad, the closure re-evaluates the loss with grad."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


# what torch.optim.Optimizer sets on itself; its __getstate__ keeps only defaults, state and param_groups
_TORCH_ATTRIBUTES = frozenset(vars(torch.optim.Optimizer([torch.zeros(1)], {}))) | {
    "_warned_capturable_if_run_uncaptured"
}


class CopiesItsAttributes:
    """Mixin (before ``torch.optim.Optimizer``): ``copy.deepcopy`` and pickling keep the subclass's attributes.

    torch's ``Optimizer.__getstate__`` keeps ``defaults``, ``state`` and ``param_groups`` only,
    so an attribute set in ``__init__`` (a generator, an optimizer-wide coefficient, registered
    hooks) would be missing from the copy. torch's own attributes (its hook dictionaries) are
    left out as torch leaves them out.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state.update({k: v for k, v in vars(self).items() if k not in _TORCH_ATTRIBUTES})
        return state


class GroupwiseOptimizer(torch.optim.Optimizer):
    """An optimizer whose step updates each param group on its own, in :meth:`_step_group`."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group, params, grads in groups_with_grads(self):
            self._step_group(group, params, grads)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Update the parameters of ``group`` that have a gradient (``params``, ``grads``)."""
        raise NotImplementedError


def zeros_state(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], *keys: str
) -> tuple[list[torch.Tensor], ...]:
    """The state tensors ``keys`` of each parameter, created as zeros at first use; one list per key."""
    lists: tuple[list[torch.Tensor], ...] = tuple([] for _ in keys)
    for p in params:
        state = optimizer.state[p]
        for key, out in zip(keys, lists):
            if key not in state:
                state[key] = torch.zeros_like(p)
            out.append(state[key])
    return lists


def group_by_device_dtype(*tensor_lists: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], ...]]:
    """Split parallel lists so that each chunk has one device and dtype (foreach ops need that)."""
    buckets: dict[Any, list[int]] = defaultdict(list)
    for i, t in enumerate(tensor_lists[0]):
        buckets[(t.device, t.dtype)].append(i)
    return [tuple([lst[i] for i in idx] for lst in tensor_lists) for idx in buckets.values()]


def adamw_rule(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step (Loshchilov & Hutter, arXiv:1711.05101) on lists of one device/dtype.

    ``step`` is the 1-based count after this update; the same arithmetic as ``torch.optim.AdamW``.
    """
    if not params:
        return
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / bias_correction1)
