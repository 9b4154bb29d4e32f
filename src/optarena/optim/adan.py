"""Adan: adaptive Nesterov momentum.

Xie, Zhou, Li, Lin, Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
Deep Models" (arXiv:2208.06677), Alg. 1; reference code sail-sg/Adan.

**Beta convention.** ``betas=(b1, b2, b3)`` are the weights on the *old* value of each
moving average, as in the reference code and in ``torch.optim.Adam``: ``b = 1 - β_paper``.
The paper's β1=0.02, β2=0.08, β3=0.01 are the defaults ``betas=(0.98, 0.92, 0.99)``.

Per parameter, with ``t`` the group's step count (1-based) and ``g_prev = g`` on the first
step (so the first difference is zero)::

    d  = g - g_prev
    m  <- b1 m + (1 - b1) g                          # gradient EMA
    v  <- b2 v + (1 - b2) d                          # gradient-difference EMA
    n  <- b3 n + (1 - b3) (g + b2 d)²                # the paper's g + (1 - β2_paper) d
    denom = sqrt(n / (1 - b3^t)) + eps
    step  = lr m / ((1 - b1^t) denom) + lr b2 v / ((1 - b2^t) denom)
    θ <- (θ - step) / (1 + lr wd)                    # proximal decay, the paper's Alg. 1 (default)
    θ <- θ (1 - lr wd) - step                        # with no_prox=True (AdamW-style)

``max_grad_norm > 0`` first scales every gradient by ``min(1, max_grad_norm / ‖g‖)``
with the norm over all parameters of all groups; the scaled gradient is what is stored as
``g_prev``, as in the reference. The reference's optional restart is not implemented.

State: four tensors per parameter (m, v, n, previous gradient) = 16 bytes/param in fp32.
The reference code's README suggests a learning rate 5-10x AdamW's and weight decay 0.02.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import groups_with_grads, run_closure
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_betas, check_hparams, check_nonnegative

__all__ = ["Adan"]


class Adan(torch.optim.Optimizer):
    """Adan (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 1e-3).
        betas: ``(b1, b2, b3)`` in [0, 1), reference-code convention (default (0.98, 0.92, 0.99)).
        eps: added to the denominator (>= 0, default 1e-8).
        weight_decay: decay strength (>= 0, default 0).
        no_prox: ``False`` (default) decays proximally, ``True`` decoupled like AdamW.
        max_grad_norm: global gradient-norm clipping inside the optimizer; 0 disables (default).
        foreach: use multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one pass per tensor (default False; :mod:`optarena.optim.kernels`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
        max_grad_norm: float = 0.0,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("Adan", lr=lr, eps=eps, weight_decay=weight_decay)
        check_betas("Adan", "betas", betas, count=3)
        check_nonnegative("Adan", "max_grad_norm", max_grad_norm)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, no_prox=no_prox,
                        max_grad_norm=max_grad_norm, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    @torch.no_grad()
    def _clip_factor(self) -> float | torch.Tensor:
        max_norm = self.defaults["max_grad_norm"]
        if max_norm == 0:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        device = grads[0].device
        norms = [torch.linalg.vector_norm(g.to(torch.promote_types(g.dtype, torch.float32))).to(device)
                 for g in grads]
        total = torch.linalg.vector_norm(torch.stack(norms))
        return torch.clamp(max_norm / (total + self.defaults["eps"]), max=1.0)  # eps as in the reference

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        clip = self._clip_factor()
        for group, params, grads in groups_with_grads(self):
            if not (isinstance(clip, float) and clip == 1.0):
                grads = [g * clip.to(g.dtype) for g in grads]  # scaled copies; p.grad stays as it was
            group["step"] = group.get("step", 0) + 1
            exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads = [], [], [], []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["prev_grad"] = g.clone()
                exp_avgs.append(state["exp_avg"])
                exp_avg_diffs.append(state["exp_avg_diff"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                prev_grads.append(state["prev_grad"])
            size_m, size_v, eps_scaled = _step_sizes(group["step"], group["lr"], group["betas"], group["eps"])
            b1, b2, b3 = (float(b) for b in group["betas"])
            hyper = dict(b1=b1, b2=b2, b3=b3, size_m=float(size_m), size_v=float(size_v),
                         eps_scaled=float(eps_scaled), decay=float(group["lr"] * group["weight_decay"]),
                         no_prox=bool(group["no_prox"]))
            _ADAN.run(group, (params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads), hyper, hyper)
        return loss


def _step_sizes(step: int, lr: float, betas: tuple[float, float, float], eps: float) -> tuple[float, float, float]:
    """Fold the bias corrections into scalars: denom = sqrt(n) + eps sqrt(1 - b3^t)."""
    b1, b2, b3 = betas
    bc3_sqrt = math.sqrt(1 - b3**step)
    return lr * bc3_sqrt / (1 - b1**step), lr * b2 * bc3_sqrt / (1 - b2**step), eps * bc3_sqrt


def _adan_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_diffs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], prev_grads: list[torch.Tensor],
    *, b1: float, b2: float, b3: float, size_m: float, size_v: float, eps_scaled: float, decay: float, no_prox: bool,
) -> None:
    for p, g, m, v, n, prev in zip(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads):
        diff = g - prev
        m.lerp_(g, 1 - b1)
        v.lerp_(diff, 1 - b2)
        z = g.add(diff, alpha=b2)
        n.mul_(b3).addcmul_(z, z, value=1 - b3)
        denom = n.sqrt().add_(eps_scaled)
        if decay != 0 and no_prox:
            p.mul_(1 - decay)
        p.addcdiv_(m, denom, value=-size_m)
        p.addcdiv_(v, denom, value=-size_v)
        if decay != 0 and not no_prox:
            p.div_(1 + decay)
        prev.copy_(g)


def _adan_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_diffs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], prev_grads: list[torch.Tensor],
    *, b1: float, b2: float, b3: float, size_m: float, size_v: float, eps_scaled: float, decay: float, no_prox: bool,
) -> None:
    diffs = torch._foreach_sub(grads, prev_grads)
    torch._foreach_lerp_(exp_avgs, grads, 1 - b1)
    torch._foreach_lerp_(exp_avg_diffs, diffs, 1 - b2)
    corrected = torch._foreach_add(grads, diffs, alpha=b2)  # g + b2 d
    torch._foreach_mul_(exp_avg_sqs, b3)
    torch._foreach_addcmul_(exp_avg_sqs, corrected, corrected, 1 - b3)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps_scaled)
    if decay != 0 and no_prox:
        torch._foreach_mul_(params, 1 - decay)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -size_m)
    torch._foreach_addcdiv_(params, exp_avg_diffs, denom, -size_v)
    if decay != 0 and not no_prox:
        torch._foreach_div_(params, 1 + decay)
    torch._foreach_copy_(prev_grads, grads)


register(
    OptimizerSpec(
        name="adan",
        cls=Adan,
        family="elementwise",
        defaults=dict(lr=3e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.02, no_prox=False),
        search_space=dict(lr=FloatRange(1e-3, 1e-1), weight_decay=FloatRange(1e-3, 0.3)),
        state_bytes=16.0,
        paper=Paper("Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
                    "2208.06677", 2022),
        description="Nesterov momentum estimated from gradient differences; m, v, n and the previous gradient",
    )
)

_ADAN = ElementwiseUpdate(_adan_single_tensor, _adan_foreach, elementwise.adan)
