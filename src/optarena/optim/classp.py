"""CLASSP: continual learning through adjustment suppression and sparsity promotion.

Ludwig, "CLASSP: a Biologically-Inspired Approach to Continual Learning through Adjustment
Suppression and Sparsity Promotion" (arXiv:2405.09637); reference code
oswaldoludwig/CLASSP. Two principles, element by element:

- *adjustment suppression*: a weight's step shrinks with the p-th power sum of all its
  past gradients (an AdaGrad generalisation; p = 2 and no threshold is AdaGrad);
- *sparsity promotion*: a weight moves only if its squared gradient exceeds a threshold.

The paper's rule, for weight ``i`` at step ``t``::

    if g_i,t² > threshold:
        w_i <- w_i - lr g_i,t / (eps + Σ_{k<t} |g_i,k|^p)^(1/p)

and the accumulator takes ``|g|^p`` of every step, updated or not.

Where the reference code differs, this class follows the paper:
- the reference tests ``(g**2).any() > threshold`` (one boolean per tensor compared with
  the threshold, so for threshold < 1 every tensor with a non-zero gradient updates, and
  for threshold >= 1 none does); here the test is per element;
- the reference accumulates ``|g|`` whatever ``p`` is (its ``** power`` is discarded);
  here it accumulates ``|g|^p``;
- the reference includes the current gradient in the sum; the paper's sum stops at
  ``t - 1``. ``include_current=True`` gives the reference's (and AdaGrad's) indexing.
  With the paper's indexing a weight's first update is ``lr g / eps^(1/p)``, 1e5 times
  larger than later ones for p=1, eps=1e-5, so the registry entry the arena tunes uses
  ``include_current=True`` (and threshold 0, since the threshold's scale is problem-
  specific and its purpose is continual learning).

``apply_scaling=False`` gives thresholded SGD (the reference trains its first task so);
the accumulator keeps accumulating. State: one accumulator (4 bytes/param in fp32); it
never decays.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim._foreach import GroupwiseOptimizer, zeros_state
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.registry import Categorical, FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_hparams, check_nonnegative, check_positive

__all__ = ["CLASSP"]


class CLASSP(GroupwiseOptimizer):
    """CLASSP (see module docstring). Defaults from the reference code.

    Args:
        params: tensors or param-group dicts.
        lr: learning rate α (>= 0, default 0.2).
        threshold: update only where g² > threshold (>= 0, default 0.5).
        eps: inside the root (> 0, default 1e-5).
        power: p of the accumulator (> 0, default 1).
        apply_scaling: divide by the accumulated root (default True); False is thresholded SGD.
        include_current: include the current gradient in the accumulator (default False, the paper).
        foreach: multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one pass per tensor (default False; :mod:`optarena.optim.kernels`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.2,
        threshold: float = 0.5,
        eps: float = 1e-5,
        power: float = 1.0,
        apply_scaling: bool = True,
        include_current: bool = False,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("CLASSP", lr=lr)
        check_nonnegative("CLASSP", "threshold", threshold)
        check_positive("CLASSP", "eps", eps)
        check_positive("CLASSP", "power", power)
        defaults = dict(lr=lr, threshold=threshold, eps=eps, power=power, apply_scaling=apply_scaling,
                        include_current=include_current, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        (sums,) = zeros_state(self, params, "grad_power_sum")
        hyper = dict(lr=group["lr"], threshold=group["threshold"], eps=group["eps"], power=group["power"],
                     apply_scaling=group["apply_scaling"], include_current=group["include_current"])
        power = float(group["power"])
        kernel_hyper = dict(lr=float(group["lr"]), threshold=float(group["threshold"]), eps=float(group["eps"]),
                            power=power, power_kind=int(power) if power in (1.0, 2.0) else 0,
                            apply_scaling=bool(group["apply_scaling"]),
                            include_current=bool(group["include_current"]), thresholded=group["threshold"] > 0)
        _CLASSP.run(group, (params, grads, sums), hyper, kernel_hyper)


def _accumulate(acc: torch.Tensor, g: torch.Tensor, power: float) -> None:
    if power == 2:
        acc.addcmul_(g, g)
    else:
        acc.add_(g.abs().pow_(power))


def _classp_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], sums: list[torch.Tensor], *,
    lr: float, threshold: float, eps: float, power: float, apply_scaling: bool, include_current: bool,
) -> None:
    for p, g, acc in zip(params, grads, sums):
        if include_current:
            _accumulate(acc, g, power)
        update = g / (acc + eps).pow_(1 / power) if apply_scaling else g.clone()
        if threshold > 0:
            update.mul_(g.square() > threshold)
        p.add_(update, alpha=-lr)
        if not include_current:
            _accumulate(acc, g, power)


def _classp_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], sums: list[torch.Tensor], *,
    lr: float, threshold: float, eps: float, power: float, apply_scaling: bool, include_current: bool,
) -> None:
    def accumulate() -> None:
        if power == 2:
            torch._foreach_addcmul_(sums, grads, grads)
        else:
            powered = torch._foreach_abs(grads)
            if power != 1:
                torch._foreach_pow_(powered, power)
            torch._foreach_add_(sums, powered)

    if include_current:
        accumulate()
    if apply_scaling:
        denom = torch._foreach_add(sums, eps)
        if power != 1:
            torch._foreach_pow_(denom, 1 / power)
        updates = torch._foreach_div(grads, denom)
    else:
        updates = [g.clone() for g in grads] if threshold > 0 else grads
    if threshold > 0:
        masks = [g.square() > threshold for g in grads]
        torch._foreach_mul_(updates, masks)
    torch._foreach_add_(params, updates, alpha=-lr)
    if not include_current:
        accumulate()


register(
    OptimizerSpec(
        name="classp",
        cls=CLASSP,
        family="elementwise",
        defaults=dict(lr=1e-2, threshold=0.0, eps=1e-5, power=1.0, include_current=True),
        search_space=dict(lr=FloatRange(1e-3, 1e-1), power=Categorical((1.0, 2.0))),
        state_bytes=4.0,
        paper=Paper("CLASSP: a Biologically-Inspired Approach to Continual Learning through Adjustment "
                    "Suppression and Sparsity Promotion", "2405.09637", 2024),
        description="AdaGrad-like p-power suppression of much-updated weights plus a gradient threshold",
    )
)

_CLASSP = ElementwiseUpdate(_classp_single_tensor, _classp_foreach, elementwise.classp)
