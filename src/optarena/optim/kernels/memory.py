"""AM-SGD's and AM-AdamW's fused passes: the inner products β needs, then the update.

Both methods reduce over a tensor (AM-SGD over the whole model) before they can update it,
so ``fused=True`` takes two passes per tensor: C kernels on CPU float32 tensors of any size
(a call costs less than the eager step's small ops on biases and gains), and
``torch.compile`` kernels on other large tensors; the rest take the optimizer's foreach form.
The C kernels sum in float32 over fixed sub-blocks, then in double over fixed blocks in a
fixed order, so no sum depends on the thread count.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from optarena.optim._foreach import group_by_device_dtype
from optarena.optim.kernels.compiled import fusable, fused_kernel
from optarena.optim.kernels.native import BLOCK, function, usable
from optarena.optim.kernels.paths import CPU_BLOCK_NUMEL, cache_blocks

__all__ = ["AMSGDPasses", "am_adamw_fused_step"]

_C_AM_SGD_SUMS, _C_AM_SGD_UPDATE = function("am_sgd_sums"), function("am_sgd_update")
_C_AM_ADAMW_SUMS, _C_AM_ADAMW_UPDATE = function("am_adamw_sums"), function("am_adamw_update")


def _partials(n: int, k: int) -> torch.Tensor:
    """Scratch for k partial sums per block of a flat reduction (callers hold it until the kernel returns)."""
    return torch.empty(-(-n // BLOCK) * k, dtype=torch.float64)


# --- AM-SGD ---------------------------------------------------------------------------------------


def c_am_sgd_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: float) -> torch.Tensor:
    """[Σ h², Σ (h - d)²] with h = g + wd θ, float64, by the C kernel."""
    out = torch.empty(2, dtype=torch.float64)
    _C_AM_SGD_SUMS(p, g, d, weight_decay=weight_decay, partials=_partials(p.numel(), 2), out=out)
    return out


def c_am_sgd_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: float, weight: float,
                    lr: float) -> None:
    """d <- d + weight (h - d);  θ <- θ - lr d, by the C kernel."""
    _C_AM_SGD_UPDATE(p, g, d, weight_decay=weight_decay, weight=weight, lr=lr)


@fused_kernel
def am_sgd_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: torch.Tensor | float,
                decayed: bool) -> torch.Tensor:
    """[Σ g², Σ (g - d)²] of one flat tensor (g with the coupled decay), in float32 or wider."""
    if decayed:
        g = g + p * weight_decay
    if g.dtype != torch.float64:
        g, d = g.float(), d.float()
    return torch.stack([(g * g).sum(), ((g - d) * (g - d)).sum()])


@fused_kernel
def am_sgd_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight: torch.Tensor,
                  lr: torch.Tensor | float, weight_decay: torch.Tensor | float, decayed: bool) -> None:
    """d <- d + weight (g - d);  θ <- θ - lr d, for one flat tensor."""
    if decayed:
        g = g + p * weight_decay
    d.add_((g - d) * weight)
    p.sub_(d * lr)


class AMSGDPasses:
    """AM-SGD's two passes over one param group's tensors that have a memory, each through its path.

    ``block_sums(hs, ds)`` and ``block_update(ps, hs, ds, weight=, lr=)`` are the method's foreach
    form on lists of one device and dtype (``h = g + wd θ``); with ``group["fused"]`` the kernels
    take every tensor they can. Blocks have a fixed size, so β does not depend on the thread count.
    """

    def __init__(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                 buffers: list[torch.Tensor], block_sums: Callable[..., torch.Tensor],
                 block_update: Callable[..., None]) -> None:
        self.group, self.block_sums, self.block_update = group, block_sums, block_update
        wd = group["weight_decay"]
        self.kernel: list[tuple[bool, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (C kernel?, flat θ, g, d)
        eager: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
        for p, g, d in zip(params, grads, buffers):
            if group.get("fused") and ((native := usable(p, g, d)) or fusable(p, g, d)):
                self.kernel.append((native, p.view(-1), g.view(-1), d.view(-1)))
                continue
            for lst, t in zip(eager, (p, g.add(p, alpha=wd) if wd != 0 else g, d)):
                lst.append(t)
        self.blocks: list[tuple[list[torch.Tensor], ...]] = []
        for chunk in group_by_device_dtype(*eager):
            self.blocks += (cache_blocks(chunk, CPU_BLOCK_NUMEL) if group["foreach"]
                            else [([p], [h], [d]) for p, h, d in zip(*chunk)])

    def sums(self) -> list[torch.Tensor]:
        """Pass 1: [Σ‖h‖², Σ‖h - d‖²] per kernel tensor and per block."""
        wd = float(self.group["weight_decay"])
        out = [c_am_sgd_sums(p, g, d, weight_decay=wd) if native
               else am_sgd_sums(p, g, d, weight_decay=wd, decayed=wd != 0) for native, p, g, d in self.kernel]
        return out + [self.block_sums(hs, ds) for _, hs, ds in self.blocks]

    def update(self, weight: torch.Tensor) -> None:
        """Pass 2: d <- d + weight (h - d);  θ <- θ - lr d."""
        lr, wd = float(self.group["lr"]), float(self.group["weight_decay"])
        for native, p, g, d in self.kernel:
            if native:
                c_am_sgd_update(p, g, d, weight_decay=wd, weight=float(weight), lr=lr)
            else:
                am_sgd_update(p, g, d, weight=weight.to(d.device), lr=lr, weight_decay=wd, decayed=wd != 0)
        for ps, hs, ds in self.blocks:
            self.block_update(ps, hs, ds, weight=weight, lr=self.group["lr"])


# --- AM-AdamW -------------------------------------------------------------------------------------


def c_am_adamw_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, beta2: float,
                    bc2_sqrt: float, eps: float, correction: float, lam: float, weight_decay: float,
                    want_sums: bool) -> torch.Tensor | None:
    """AM-AdamW's pass 1 in C: the second moment, then (``want_sums``) β's three inner products, float64."""
    out = torch.empty(3, dtype=torch.float64)
    _C_AM_ADAMW_SUMS(p, g, d, v, beta2=beta2, bc2_sqrt=bc2_sqrt, eps=eps, correction=correction, lam=lam,
                     weight_decay=weight_decay, want_sums=want_sums, partials=_partials(p.numel(), 3), out=out)
    return out if want_sums else None


def c_am_adamw_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, keep: float,
                      bc2_sqrt: float, eps: float, correction: float, lam: float, lr: float,
                      weight_decay: float) -> None:
    """AM-AdamW's pass 2 in C: d <- d - keep u / (1 + λP);  θ <- θ (1 - lr wd) - lr d / P."""
    _C_AM_ADAMW_UPDATE(p, g, d, v, keep=keep, bc2_sqrt=bc2_sqrt, eps=eps, correction=correction, lam=lam, lr=lr,
                       weight_decay=weight_decay)


@fused_kernel
def am_adamw_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, beta2: torch.Tensor | float,
                  bc2_sqrt: torch.Tensor | float, eps: torch.Tensor | float, correction: torch.Tensor,
                  lam: torch.Tensor | float, wd: torch.Tensor | float, want_sums: bool) -> torch.Tensor | None:
    """Pass 1: the second moment, then β's three inner products [gap, pull, curvature]."""
    v.mul_(beta2).add_(g * g * (1 - beta2))
    if not want_sums:
        return None
    precond = (v.sqrt() / bc2_sqrt + eps) * correction
    damp = precond * lam + 1
    weighted = (d - g) / (precond * damp)
    return torch.stack([(g * (d / precond + p * wd)).sum(), (weighted * (g + (damp - 1) * d)).sum(),
                        (weighted * (d - g)).sum()])


@fused_kernel
def am_adamw_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *,
                    keep: torch.Tensor, bc2_sqrt: torch.Tensor | float, eps: torch.Tensor | float,
                    correction: torch.Tensor, lam: torch.Tensor | float, lr: torch.Tensor | float,
                    wd: torch.Tensor | float) -> None:
    """Pass 2: d <- d - (1 - β) u / (1 + a);  θ <- θ (1 - lr wd) - lr d / P."""
    precond = (v.sqrt() / bc2_sqrt + eps) * correction
    d.sub_((d - g) * keep / (precond * lam + 1))
    p.mul_(1 - lr * wd).sub_(d / precond * lr)


def _compiled_tensor_step(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """One AM-AdamW tensor step as two compiled passes over flat views."""
    flat = (p.view(-1), g.view(-1), d.view(-1), v.view(-1))
    precond = dict(bc2_sqrt=float(bc2_sqrt), eps=float(eps), correction=(1 - beta_max * prod).to(p.dtype),
                   lam=float(lam))
    sums = am_adamw_sums(*flat, beta2=float(beta2), wd=float(wd), want_sums=not first, **precond)
    if first:
        beta = torch.full((), beta_max, device=p.device, dtype=prod.dtype)
    else:
        sums = sums.to(prod.dtype)
        gap, pull, curvature = sums[0] * gap_scale, sums[1], sums[2]
        beta = torch.where(curvature > 0, ((gap - pull) / curvature).clamp(0.0, beta_max),
                           torch.full_like(curvature, beta_max))
    am_adamw_update(*flat, keep=(1 - beta).to(p.dtype), lr=float(lr), wd=float(wd), **precond)
    prod.mul_(beta)


def _c_tensor_step(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """One AM-AdamW tensor step with the C kernels, β in Python floats.

    β, 1 - β and the correction are computed in double and rounded to float32 once (the eager
    path rounds each op to float32): rounding-level differences.
    """
    flat = (p.view(-1), g.view(-1), d.view(-1), v.view(-1))
    precond = dict(bc2_sqrt=float(bc2_sqrt), eps=float(eps), correction=1.0 - beta_max * prod.item(), lam=float(lam))
    sums = c_am_adamw_sums(*flat, beta2=float(beta2), weight_decay=float(wd), want_sums=not first, **precond)
    beta = beta_max
    if not first:
        gap, pull, curvature = sums.tolist()
        if curvature > 0:  # as torch.where(curvature > 0, clamp(...), beta_max): a NaN ratio stays NaN
            beta = min(max((gap * gap_scale - pull) / curvature, 0.0), beta_max)
    c_am_adamw_update(*flat, keep=1.0 - beta, lr=float(lr), weight_decay=float(wd), **precond)
    prod.mul_(beta)


def am_adamw_fused_step(*tensors: torch.Tensor) -> Callable[..., None] | None:
    """The fused tensor step that takes ``(θ, g, d, v)``: C kernels on CPU float32 tensors of any size,
    compiled ones on other large contiguous tensors; None leaves them to the eager step."""
    if usable(*tensors):
        return _c_tensor_step
    if fusable(*tensors):
        return _compiled_tensor_step
    return None
