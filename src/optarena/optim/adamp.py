"""AdamP and SGDP: momentum optimizers that stop growing the norm of scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
Optimizers on Scale-invariant Weights" (ICLR 2021, arXiv:2006.08217); reference code
clovaai/AdamP.

A weight followed by a normalisation layer is scale-invariant: its gradient is orthogonal
to it, and momentum then inflates its norm, which shrinks the effective step. For every
tensor with two or more dimensions the optimizer tests, per output channel and then for
the whole layer (first match wins), whether the *raw gradient* is nearly orthogonal to the
weight::

    max |cos(g, θ)| < delta / sqrt(view size)

and if so removes the radial component from the *update* ``u`` (not from the gradient)::

    θ̂ = θ / (‖θ‖ + eps);   u <- u - θ̂ <θ̂, u>          # per channel or for the whole layer
    wd_ratio = wd_ratio_param (else 1)

AdamP:  m, v as Adam;  u = m / (sqrt(v / (1 - b2^t)) + eps)  (Nesterov: (b1 m + (1 - b1) g) instead of m)
        θ <- θ (1 - lr wd wd_ratio) - lr / (1 - b1^t) u
SGDP:   buf <- momentum buf + (1 - dampening) g;  u = g + momentum buf (Nesterov) or buf
        θ <- θ (1 - lr wd wd_ratio / (1 - momentum)) - lr u

Bias corrections use the group's step count; the reference counts per parameter, which
agrees unless a parameter skips steps. State: AdamP 2 tensors (8 bytes/param in fp32),
SGDP 1 tensor (4 bytes/param).

The test and the projection are in :mod:`optarena.optim.scale_invariance`. ``fused=True``
runs each large CPU float32 matrix's step in one pass of a C kernel that speculates on the
test's outcome, compiled passes elsewhere (:mod:`optarena.optim.kernels.projected`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from optarena.optim._foreach import GroupwiseOptimizer, zeros_state
from optarena.optim.kernels import projected
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.optim.scale_invariance import remove_radial
from optarena.validation import check_hparams, check_number, check_positive, check_unit_interval

__all__ = ["AdamP", "SGDP"]


def _check_common(name: str, lr: float, weight_decay: float, delta: float, wd_ratio: float, eps: float) -> None:
    check_hparams(name, lr=lr, weight_decay=weight_decay)
    check_positive(name, "delta", delta)
    check_number(name, "wd_ratio", wd_ratio, 0.0, 1.0)
    check_positive(name, "eps", eps)


class AdamP(GroupwiseOptimizer):
    """AdamP (see module docstring). Defaults from the paper's code: lr=1e-3, betas=(0.9, 0.999).

    Args:
        params: tensors or param-group dicts.
        lr, betas, eps, weight_decay: as in AdamW (decoupled decay, scaled by ``wd_ratio`` on
            projected tensors).
        delta: cosine threshold of the scale-invariance test (default 0.1).
        wd_ratio: weight-decay multiplier for projected tensors, in [0, 1] (default 0.1).
        nesterov: use the Nesterov form of the first moment (default False).
        foreach: multi-tensor moments (default True); the projection is per tensor either way.
        fused: one C-kernel pass per large CPU float32 matrix, compiled passes elsewhere
            (default False; :mod:`optarena.optim.kernels.projected`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        _check_common("AdamP", lr, weight_decay, delta, wd_ratio, eps)
        check_hparams("AdamP", betas=betas)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        group["step"] = group.get("step", 0) + 1
        exp_avgs, exp_avg_sqs = zeros_state(self, params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        hyper = dict(beta1=float(beta1), beta2=float(beta2), bc2_sqrt=math.sqrt(1 - beta2 ** group["step"]),
                     eps=float(group["eps"]), step_size=float(group["lr"]) / (1 - beta1 ** group["step"]),
                     decay=float(group["lr"] * group["weight_decay"]), nesterov=bool(group["nesterov"]))
        _ADAMP.run(self, group, (params, grads, exp_avgs, exp_avg_sqs), hyper, step=hyper["step_size"])


def _adamp_block(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], *, group: dict[str, Any], wd_ratio: float, view: tuple[int, int] | None,
) -> None:
    """Adam moments and the decoupled step on a block of tensors; ``view`` projects (one tensor)."""
    beta1, beta2 = group["betas"]
    lr, eps, step, wd = group["lr"], group["eps"], group["step"], group["weight_decay"]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(1 - beta2**step))
    torch._foreach_add_(denom, eps)
    first = torch._foreach_lerp(exp_avgs, grads, 1 - beta1) if group["nesterov"] else exp_avgs
    updates = torch._foreach_div(first, denom)
    if view is not None:
        updates = [remove_radial(params[0], updates[0], view, eps)]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd * wd_ratio)
    torch._foreach_add_(params, updates, alpha=-lr / (1 - beta1**step))


def _adamp_direction(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: float,
                     bc2_sqrt: float, eps: float, nesterov: bool, **_: Any) -> torch.Tensor:
    """AdamP's unprojected direction u from the updated moments (the projection's input)."""
    first = torch.lerp(m, g, 1 - beta1) if nesterov else m
    return first / v.sqrt().div_(bc2_sqrt).add_(eps)


_ADAMP = projected.ProjectedUpdate(_adamp_block, _adamp_direction, projected.adamp_unprojected,
                                   projected.c_adamp_step)


class SGDP(GroupwiseOptimizer):
    """SGDP (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 0.1).
        momentum: in [0, 1) (default 0.9); dampening in [0, 1) (default 0).
        weight_decay: decoupled decay, divided by ``1 - momentum`` as in the reference (default 0).
        delta, wd_ratio, eps: the scale-invariance test (defaults 0.1, 0.1, 1e-8).
        nesterov: Nesterov momentum (default False).
        foreach: multi-tensor momentum update (default True).
        fused: as for :class:`AdamP`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        _check_common("SGDP", lr, weight_decay, delta, wd_ratio, eps)
        check_hparams("SGDP", momentum=momentum)
        check_unit_interval("SGDP", "dampening", dampening)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio, foreach=foreach,
                        fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        (bufs,) = zeros_state(self, params, "momentum_buffer")
        mu, lr = group["momentum"], group["lr"]
        hyper = dict(mu=float(mu), damp=float(1 - group["dampening"]), lr=float(lr),
                     decay=float(lr * group["weight_decay"] / (1 - mu)), nesterov=bool(group["nesterov"]))
        _SGDP.run(self, group, (params, grads, bufs), hyper, step=float(lr))


def _sgdp_block(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], *,
    group: dict[str, Any], wd_ratio: float, view: tuple[int, int] | None,
) -> None:
    """Momentum and the decoupled step on a block of tensors; ``view`` projects (one tensor)."""
    lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    torch._foreach_mul_(bufs, mu)
    torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
    updates = torch._foreach_add(grads, bufs, alpha=mu) if group["nesterov"] else list(bufs)
    if view is not None:  # a new tensor: the buffer itself is never projected
        updates = [remove_radial(params[0], updates[0], view, group["eps"])]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd * wd_ratio / (1 - mu))
    torch._foreach_add_(params, updates, alpha=-lr)


def _sgdp_direction(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: float, nesterov: bool,
                    **_: Any) -> torch.Tensor:
    """SGDP's unprojected direction u from the updated buffer."""
    return g.add(buf, alpha=mu) if nesterov else buf


_SGDP = projected.ProjectedUpdate(_sgdp_block, _sgdp_direction, projected.sgdp_unprojected, projected.c_sgdp_step)


register(
    OptimizerSpec(
        name="adamp",
        cls=AdamP,
        family="elementwise",
        defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, delta=0.1, wd_ratio=0.1),
        search_space=dict(lr=FloatRange(3e-4, 3e-2), weight_decay=FloatRange(1e-3, 0.3)),
        state_bytes=8.0,
        paper=Paper("AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
                    "2006.08217", 2021),
        description="AdamW with the radial part of the update removed on scale-invariant weights",
    )
)

register(
    OptimizerSpec(
        name="sgdp",
        cls=SGDP,
        family="elementwise",
        defaults=dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-5, delta=0.1, wd_ratio=0.1),
        search_space=dict(lr=FloatRange(3e-3, 3.0), weight_decay=FloatRange(1e-6, 1e-3)),
        state_bytes=4.0,
        paper=Paper("AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
                    "2006.08217", 2021),
        description="SGD with momentum and the radial part of the update removed on scale-invariant weights",
    )
)
