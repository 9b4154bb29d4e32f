"""One-pass per-tensor kernels of the purely elementwise methods (``fused=True``).

Each function is one method's step on flat views of one tensor and its state, written in
plain torch ops and compiled by :class:`~optarena.optim.kernels.compiled.FusedKernel`; the
C loop of the same name in ``kernels.c`` follows it op by op and takes CPU float32 tensors.
Float keywords arrive as 0-d float64 tensors (Python floats in the C loop). Each reads its
tensors once and writes each once; it computes in float32 or wider and rounds once per
stored tensor, so it agrees with the optimizer's foreach path to rounding.
"""

from __future__ import annotations

import torch

from optarena.optim.kernels.compiled import fused_kernel
from optarena.optim.kernels.native import function

__all__ = ["adan", "classp", "lion", "sf_adamw", "sophia"]


@fused_kernel(native=function("lion"))
def lion(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, lr: torch.Tensor, beta1: torch.Tensor,
         beta2: torch.Tensor, weight_decay: torch.Tensor) -> None:
    """Lion (sign map): θ <- θ (1 - lr wd) - lr sign(b1 m + (1 - b1) g);  m <- b2 m + (1 - b2) g.

    ``g - g`` (0, or NaN for a NaN or inf gradient) lets a non-finite gradient reach θ: sign(NaN) is 0.
    """
    update = torch.sign(m * beta1 + g * (1 - beta1)) + (g - g)
    p.mul_(1 - lr * weight_decay).sub_(update * lr)
    m.mul_(beta2).add_(g * (1 - beta2))


@fused_kernel(native=function("adan"))
def adan(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, n: torch.Tensor, prev: torch.Tensor,
         *, b1: torch.Tensor, b2: torch.Tensor, b3: torch.Tensor, size_m: torch.Tensor, size_v: torch.Tensor,
         eps_scaled: torch.Tensor, decay: torch.Tensor, no_prox: bool) -> None:
    """Adan with its bias corrections folded into ``size_m``, ``size_v`` and ``eps_scaled``."""
    diff = g - prev
    z = g + diff * b2
    m.mul_(b1).add_(g * (1 - b1))
    v.mul_(b2).add_(diff * (1 - b2))
    n.mul_(b3).add_(z * z * (1 - b3))
    if no_prox:
        p.mul_(1 - decay)
    p.sub_((m * size_m + v * size_v) / (n.sqrt() + eps_scaled))
    if not no_prox:
        p.div_(1 + decay)
    prev.copy_(g)


@fused_kernel(native=function("sophia"))
def sophia(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, h: torch.Tensor, *, lr: torch.Tensor,
           beta1: torch.Tensor, rho: torch.Tensor, weight_decay: torch.Tensor, eps: torch.Tensor) -> None:
    """Sophia's clipped step: θ <- θ (1 - lr wd) - (lr / rho) clip(m / max(h, eps / rho), -rho, rho)."""
    p.mul_(1 - lr * weight_decay)
    m.mul_(beta1).add_(g * (1 - beta1))
    ratio = torch.clamp(m / torch.clamp(h, min=eps / rho), min=-rho, max=rho) + (g - g)  # inf g reaches θ
    p.sub_(ratio * (lr / rho))


@fused_kernel(native=function("classp"))
def classp(p: torch.Tensor, g: torch.Tensor, acc: torch.Tensor, *, lr: torch.Tensor, threshold: torch.Tensor,
           eps: torch.Tensor, power: torch.Tensor, power_kind: int, apply_scaling: bool, include_current: bool,
           thresholded: bool) -> None:
    """One CLASSP step; ``power_kind`` 1 or 2 spells out those powers, 0 uses ``power``."""
    powered = g.abs() if power_kind == 1 else g * g if power_kind == 2 else g.abs().pow(power)
    total = acc + powered if include_current else acc
    if apply_scaling:
        root = total + eps if power_kind == 1 else (total + eps).sqrt() if power_kind == 2 else (
            (total + eps).pow(1 / power))
        update = g / root
    else:
        update = g
    if thresholded:
        update = torch.where(g * g > threshold, update, 0.0)
    p.sub_(update * lr)
    acc.add_(powered)


@fused_kernel(native=function("sf_adamw"))
def sf_adamw(y: torch.Tensor, g: torch.Tensor, z: torch.Tensor, v: torch.Tensor, *, lr: torch.Tensor,
             ckp: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor, bc2_sqrt: torch.Tensor,
             eps: torch.Tensor, weight_decay: torch.Tensor) -> None:
    """Schedule-Free AdamW's step at y (the parameter), z and the second moment v."""
    v.mul_(beta2).add_(g * g * (1 - beta2))
    normalized = g / (v.sqrt() / bc2_sqrt + eps) + y * weight_decay
    y.add_((z - y) * ckp).add_(normalized * (lr * (beta1 * (1 - ckp) - 1)))
    z.sub_(normalized * lr)
