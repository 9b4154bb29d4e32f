"""AdamP and SGDP: momentum optimizers that stop growing the norm of scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
Optimizers on Scale-invariant Weights" (ICLR 2021, arXiv:2006.08217); reference code
clovaai/AdamP; ALGORITHMS.md §11.

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
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from optarena.optim._foreach import collect_grads, group_by_device_dtype
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register

__all__ = ["AdamP", "SGDP", "project_scale_invariant"]


def project_scale_invariant(
    param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[torch.Tensor, float]:
    """Remove the radial component of ``update`` if ``param`` looks scale-invariant.

    Returns the (possibly new) update and the weight-decay ratio to use. Tensors with fewer
    than two dimensions are returned unchanged with ratio 1.
    """
    if param.ndim < 2:
        return update, 1.0
    for view in ((param.shape[0], -1), (1, -1)):  # per output channel, then the whole layer
        p_view = param.reshape(view)
        cosine = F.cosine_similarity(grad.reshape(view), p_view, dim=1, eps=eps).abs_()
        if cosine.max() < delta / math.sqrt(p_view.shape[1]):
            p_unit = p_view / p_view.norm(dim=1, keepdim=True).add_(eps)
            u_view = update.reshape(view)
            radial = (p_unit * u_view).sum(dim=1, keepdim=True)
            return (u_view - p_unit * radial).view_as(update), wd_ratio
    return update, 1.0


def _check_common(name: str, lr: float, weight_decay: float, delta: float, wd_ratio: float, eps: float) -> None:
    if not (isinstance(lr, (int, float)) and lr >= 0.0):
        raise ValueError(f"{name} lr must be a float >= 0, got lr={lr!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"{name} weight_decay must be >= 0, got weight_decay={weight_decay}")
    if not delta > 0.0:
        raise ValueError(f"{name} delta must be > 0, got delta={delta}")
    if not 0.0 <= wd_ratio <= 1.0:
        raise ValueError(f"{name} wd_ratio must be in [0, 1], got wd_ratio={wd_ratio}")
    if not eps > 0.0:
        raise ValueError(f"{name} eps must be > 0, got eps={eps}")


class AdamP(torch.optim.Optimizer):
    """AdamP (see module docstring). Defaults from the paper's code: lr=1e-3, betas=(0.9, 0.999).

    Args:
        params: tensors or param-group dicts.
        lr, betas, eps, weight_decay: as in AdamW (decoupled decay, scaled by ``wd_ratio`` on
            projected tensors).
        delta: cosine threshold of the scale-invariance test (default 0.1).
        wd_ratio: weight-decay multiplier for projected tensors, in [0, 1] (default 0.1).
        nesterov: use the Nesterov form of the first moment (default False).
        foreach: multi-tensor moments (default True); the projection is per tensor either way.
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
    ) -> None:
        _check_common("AdamP", lr, weight_decay, delta, wd_ratio, eps)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamP betas must be in [0, 1), got betas={betas!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = collect_grads("AdamP", group["params"])
            if not params:
                continue
            group["step"] = group.get("step", 0) + 1
            exp_avgs, exp_avg_sqs = [], []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            for chunk in group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs):
                _adamp_update(*chunk, group=group)
        return loss


def _adamp_update(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], *, group: dict[str, Any],
) -> None:
    beta1, beta2 = group["betas"]
    lr, eps, step = group["lr"], group["eps"], group["step"]
    bc2_sqrt = math.sqrt(1 - beta2**step)
    if group["foreach"]:
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        first = torch._foreach_lerp(exp_avgs, grads, 1 - beta1) if group["nesterov"] else exp_avgs
        updates = torch._foreach_div(first, denom)
    else:
        updates = []
        for g, m, v in zip(grads, exp_avgs, exp_avg_sqs):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt().div_(bc2_sqrt).add_(eps)
            first = torch.lerp(m, g, 1 - beta1) if group["nesterov"] else m
            updates.append(first / denom)
    _project_decay_apply(params, grads, updates, group, lr / (1 - beta1**step), decay_scale=1.0)


def _project_decay_apply(
    params: list[torch.Tensor], grads: list[torch.Tensor], updates: list[torch.Tensor],
    group: dict[str, Any], step_size: float, decay_scale: float,
) -> None:
    """Project each update, decay by ``lr wd ratio decay_scale``, then ``θ -= step_size u``."""
    lr, wd = group["lr"], group["weight_decay"]
    updates = list(updates)
    factors = []
    for i, (p, g) in enumerate(zip(params, grads)):
        updates[i], ratio = project_scale_invariant(p, g, updates[i], group["delta"], group["wd_ratio"], group["eps"])
        factors.append(1 - lr * wd * ratio * decay_scale)
    if group["foreach"]:
        if wd != 0:
            torch._foreach_mul_(params, factors)
        torch._foreach_add_(params, updates, alpha=-step_size)
    else:
        for p, u, f in zip(params, updates, factors):
            if wd != 0:
                p.mul_(f)
            p.add_(u, alpha=-step_size)


class SGDP(torch.optim.Optimizer):
    """SGDP (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 0.1).
        momentum: in [0, 1) (default 0.9); dampening in [0, 1) (default 0).
        weight_decay: decoupled decay, divided by ``1 - momentum`` as in the reference (default 0).
        delta, wd_ratio, eps: the scale-invariance test (defaults 0.1, 0.1, 1e-8).
        nesterov: Nesterov momentum (default False).
        foreach: multi-tensor momentum update (default True).
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
    ) -> None:
        _check_common("SGDP", lr, weight_decay, delta, wd_ratio, eps)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGDP momentum must be in [0, 1), got momentum={momentum}")
        if not 0.0 <= dampening < 1.0:
            raise ValueError(f"SGDP dampening must be in [0, 1), got dampening={dampening}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = collect_grads("SGDP", group["params"])
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            mu, damp = group["momentum"], group["dampening"]
            for ps, gs, bs in group_by_device_dtype(params, grads, bufs):
                if group["foreach"]:
                    torch._foreach_mul_(bs, mu)
                    torch._foreach_add_(bs, gs, alpha=1 - damp)
                    updates = torch._foreach_add(gs, bs, alpha=mu) if group["nesterov"] else list(bs)
                else:
                    updates = []
                    for g, b in zip(gs, bs):
                        b.mul_(mu).add_(g, alpha=1 - damp)
                        updates.append(g.add(b, alpha=mu) if group["nesterov"] else b)
                # the projection returns new tensors, so the buffers themselves are never modified
                _project_decay_apply(ps, gs, updates, group, group["lr"], decay_scale=1 / (1 - mu))
        return loss


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
