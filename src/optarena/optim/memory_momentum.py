"""Adaptive Memory momentum: AM-SGD and AM-AdamW, a momentum coefficient chosen every step.

Topollai, Choromanska, "Adaptive Memory Momentum via a Model-Based Framework for Deep
Learning Optimization" (arXiv:2510.04988, AISTATS 2026); ALGORITHMS.md §12. No official
code is public; the β formula below is derived from the paper's model, and AM-AdamW's
details follow an unofficial implementation (lower confidence, see below).

**Model.** Around ``x_t`` the loss is modelled by two planes, the current gradient
``f + <g, s>`` and the memory ``f̂ + <d, s>``, and the step ``s`` minimises
``max(planes) + ‖s‖²/(2η) + λ‖s + η d‖²/(2η)``. Its dual weight β on the memory plane
gives ``d <- ((β + λ) d + (1 - β) g) / (1 + λ)`` and ``x <- x - η d``; maximising the
dual over β with the estimate ``f̂ - f ≈ η <g, d>`` gives

    β = clip( (‖g‖² + 2λ<g, d> - λ‖d‖²) / ‖d - g‖²,  0, β_max )
      = clip( (1 + λ) ‖g‖² / ‖d - g‖² - λ,  0, β_max )

**AM-SGD** takes every inner product over *all* parameters of all groups (one β for the
model; distributed training needs an all-reduce of two scalars). First step: ``d = g``.
``‖d - g‖ = 0`` gives β = 0 (then the update is ``d = g`` whatever β is).
``weight_decay`` is coupled (added to the gradient) as in ``torch.optim.SGD``.

**AM-AdamW** (per tensor, lower confidence). The proximal terms use the diagonal
metric ``P = (1 - β_max ∏_{i<t} β_i)(sqrt(v̂) + eps)`` (Adam's denominator, with a first-
moment bias correction for the varying β) for ``‖s‖²`` and ``P²`` for the memory term,
which gives, with ``a = λ P`` and ``M = 1 / (P (1 + a))`` elementwise::

    v <- b2 v + (1 - b2) g²;   u = d - g
    β  = clip( [ (η_{t-1}/η_t) <g, d/P + wd θ> - <u, M (g + a d)> ] / <u, M u>,  0, β_max )
    d <- d - (1 - β) u / (1 + a)            # = (I + λP)⁻¹((1 - β) g + (λP + β) d)
    θ <- θ (1 - η wd) - η d / P

The first term estimates ``(f̂ - f)/η`` by the previous displacement (with the current
``P`` and ``θ`` standing in for the previous ones). On each tensor's first step β =
β_max and ``d = 0``, which reproduces Adam's first step. With λ = 0 and β fixed this is
AdamW. The unofficial code's defaults are β_max = 0.89 and λ = 0.1.

State: AM-SGD one tensor (4 bytes/param fp32); AM-AdamW two tensors (8 bytes/param)
plus one scalar per tensor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optarena.optim import _native
from optarena.optim._foreach import (
    cache_blocks, collect_grads, CPU_BLOCK_NUMEL, group_by_device_dtype, run_closure,
)
from optarena.optim._fused import fusable, fused_kernel
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_hparams, check_nonnegative, check_positive, check_unit_interval

__all__ = ["AMAdamW", "AMSGD"]


def _check_lambda_beta(name: str, model_lambda: float, beta_max: float) -> None:
    check_nonnegative(name, "model_lambda", model_lambda)
    check_unit_interval(name, "beta_max", beta_max)


class AMSGD(torch.optim.Optimizer):
    """AM-SGD: SGD whose momentum coefficient comes from a two-plane model (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 0.1).
        model_lambda: λ, weight of the memory proximal term (>= 0, default 0.1).
        beta_max: upper clip of β in [0, 1) (default 0.9).
        weight_decay: L2 penalty added to the gradient (>= 0, default 0).
        foreach: multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one kernel per pass (default False): C kernels on CPU float32 tensors of any
            size (:mod:`optarena.optim._native`), ``torch.compile`` on other large tensors
            (:mod:`optarena.optim._fused`; compiles at the first step).

    ``model_lambda`` and ``beta_max`` are optimizer-wide (β is one number for the model).
    ``last_beta`` holds the β of the latest step (a 0-d tensor).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        model_lambda: float = 0.1,
        beta_max: float = 0.9,
        weight_decay: float = 0.0,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("AMSGD", lr=lr, weight_decay=weight_decay)
        _check_lambda_beta("AMSGD", model_lambda, beta_max)
        self.model_lambda = model_lambda
        self.beta_max = beta_max
        self.last_beta: torch.Tensor | None = None
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, foreach=foreach, fused=fused))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        lam = self.model_lambda
        work = []  # (group, blocks of (params, grads, buffers)) for parameters with a memory
        kernel_work = []  # (group, native, param, raw grad, buffer) for large tensors with fused=True
        sums: list[torch.Tensor] = []  # per block: [Σ‖g‖², Σ‖d - g‖²]
        for group in self.param_groups:
            params, grads = collect_grads("AMSGD", group["params"])
            wd = group["weight_decay"]
            old: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:  # first step: d = g
                    g = g.add(p, alpha=wd) if wd != 0 else g
                    state["momentum_buffer"] = g.clone()
                    p.add_(g, alpha=-group["lr"])
                elif group.get("fused") and ((native := _native.usable(p, g, state["momentum_buffer"]))  # any size
                                             or fusable(p, g, state["momentum_buffer"])):
                    flat = (p.view(-1), g.view(-1), state["momentum_buffer"].view(-1))
                    kernel_work.append((group, native, *flat))
                    if native:
                        sums.append(_native.am_sgd_sums(*flat, weight_decay=float(wd)))
                    else:
                        sums.append(_am_sgd_sums(*flat, weight_decay=float(wd), decayed=wd != 0))
                else:
                    for lst, t in zip(old, (p, g.add(p, alpha=wd) if wd != 0 else g, state["momentum_buffer"])):
                        lst.append(t)
            blocks = []
            for chunk in group_by_device_dtype(*old):
                # fixed-size blocks: their sums, and so β, must not depend on the thread count
                blocks += (cache_blocks(chunk, CPU_BLOCK_NUMEL) if group["foreach"]
                           else [([p], [g], [d]) for p, g, d in zip(*chunk)])
            for _, gs, ds in blocks:  # pass 1: the two sums β needs, block by block (no model-size temporary)
                acc = torch.promote_types(gs[0].dtype, torch.float32)
                diffs = torch._foreach_sub(gs, ds)
                sums.append(torch.stack([torch.stack(torch._foreach_norm(gs, 2, dtype=acc)).square().sum(),
                                         torch.stack(torch._foreach_norm(diffs, 2, dtype=acc)).square().sum()]))
            work.append((group, blocks))
        if not sums:
            return loss
        device = sums[0].device
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in sums) else torch.float32
        grad_sq, diff_sq = torch.stack([t.to(device=device, dtype=dtype) for t in sums]).sum(0)
        beta = torch.where(diff_sq > 0, ((1 + lam) * grad_sq / diff_sq - lam).clamp(0.0, self.beta_max),
                           torch.zeros_like(diff_sq))
        self.last_beta = beta
        weight = (1 - beta) / (1 + lam)  # d <- d + weight (g - d)
        # reversed: the tensors summed last may still be cached (no gain measured on this machine)
        for group, native, p, g, d in reversed(kernel_work):
            if native:
                _native.am_sgd_update(p, g, d, weight_decay=float(group["weight_decay"]), weight=float(weight),
                                      lr=float(group["lr"]))
            else:
                _am_sgd_update(p, g, d, weight=weight.to(d.device), lr=float(group["lr"]),
                               weight_decay=float(group["weight_decay"]), decayed=group["weight_decay"] != 0)
        for group, blocks in work:  # pass 2: the update
            for ps, gs, ds in blocks:
                diffs = torch._foreach_sub(gs, ds)
                torch._foreach_mul_(diffs, weight.to(device=ds[0].device, dtype=ds[0].dtype))
                torch._foreach_add_(ds, diffs)
                torch._foreach_add_(ps, ds, alpha=-group["lr"])
        return loss


@fused_kernel
def _am_sgd_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: torch.Tensor | float,
                 decayed: bool) -> torch.Tensor:
    """[Σ g², Σ (g - d)²] of one flat tensor (g with the coupled decay), in float32 or wider."""
    if decayed:
        g = g + p * weight_decay
    if g.dtype != torch.float64:
        g, d = g.float(), d.float()
    return torch.stack([(g * g).sum(), ((g - d) * (g - d)).sum()])


@fused_kernel
def _am_sgd_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight: torch.Tensor,
                   lr: torch.Tensor | float, weight_decay: torch.Tensor | float, decayed: bool) -> None:
    """d <- d + weight (g - d);  θ <- θ - lr d, for one flat tensor."""
    if decayed:
        g = g + p * weight_decay
    d.add_((g - d) * weight)
    p.sub_(d * lr)


class AMAdamW(torch.optim.Optimizer):
    """AM-AdamW: AdamW with a per-tensor adaptive momentum coefficient (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 1e-3).
        betas: (β_max, b2): the clip of the adaptive β1 and the second-moment decay (default (0.89, 0.999)).
        eps: added to Adam's denominator (default 1e-8).
        weight_decay: decoupled, multiplied by lr (default 0.01).
        model_lambda: λ of the memory proximal term (default 0.1).
        fused: two passes per tensor, the inner products and the update (default False): C
            kernels on CPU float32 tensors of any size (:mod:`optarena.optim._native`),
            ``torch.compile`` on other large tensors (compiles at the first step).

    Updates are per tensor (β needs three reductions per tensor), so there is no foreach flag.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.89, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        model_lambda: float = 0.1,
        fused: bool = False,
    ) -> None:
        check_hparams("AMAdamW", lr=lr, betas=betas, weight_decay=weight_decay)
        _check_lambda_beta("AMAdamW", model_lambda, betas[0])
        check_positive("AMAdamW", "eps", eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, model_lambda=model_lambda,
                        fused=fused)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = collect_grads("AMAdamW", group["params"])
            if not params:
                continue
            beta_max, beta2 = group["betas"]
            lr, eps, wd, lam = group["lr"], group["eps"], group["weight_decay"], group["model_lambda"]
            group["step"] = t = group.get("step", 0) + 1
            prev_lr = group.get("prev_lr", lr)
            gap_scale = prev_lr / lr if lr > 0 else 1.0
            group["prev_lr"] = lr
            bc2_sqrt = math.sqrt(1 - beta2**t)
            for p, g in zip(params, grads):
                state = self.state[p]
                first = "exp_avg" not in state
                if first:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["beta_product"] = torch.ones(
                        (), device=p.device, dtype=torch.promote_types(p.dtype, torch.float32))
                tensor_step = _am_adamw_tensor
                if group.get("fused"):  # C kernels take CPU float32 tensors of any size, compiled ones large tensors
                    if _native.usable(p, g, state["exp_avg"], state["exp_avg_sq"]):
                        tensor_step = _am_adamw_native_tensor
                    elif fusable(p, g, state["exp_avg"], state["exp_avg_sq"]):
                        tensor_step = _am_adamw_fused_tensor
                tensor_step(p, g, state["exp_avg"], state["exp_avg_sq"], state["beta_product"], first=first,
                            beta_max=beta_max, beta2=beta2, bc2_sqrt=bc2_sqrt, eps=eps, lr=lr, wd=wd, lam=lam,
                            gap_scale=gap_scale)
        return loss


def _blocks(*tensors: torch.Tensor, block_numel: int = CPU_BLOCK_NUMEL) -> list[tuple[torch.Tensor, ...]]:
    """Parallel flat slices of one parameter's tensors (whole tensors off CPU or if not contiguous)."""
    if not all(t.is_contiguous() for t in tensors):
        return [tensors]
    flats = [t.view(-1) for t in tensors]
    if tensors[0].device.type != "cpu":
        return [tuple(flats)]
    n = flats[0].numel()
    return [tuple(f[s:s + block_numel] for f in flats) for s in range(0, n, block_numel)]


def _am_adamw_tensor(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """One AM-AdamW step on one tensor: pass 1 sums β's three inner products, pass 2 updates.

    Both passes run block by block (cache-sized slices on CPU) and recompute the cheap
    elementwise quantities instead of storing tensor-sized temporaries.
    """
    acc = prod.dtype
    correction = (1 - beta_max * prod).to(p.dtype)
    blocks = _blocks(p, g, d, v)

    def preconditioner(vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precond = vb.sqrt().div_(bc2_sqrt).add_(eps).mul_(correction)  # P
        return precond, precond * lam + 1  # P, 1 + a with a = λP

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.dot(a, b) if a.ndim == 1 else (a * b).sum()).to(acc)

    for _, gb, _, vb in blocks:
        vb.mul_(beta2).addcmul_(gb, gb, value=1 - beta2)
    if first:
        beta = torch.full((), beta_max, device=p.device, dtype=acc)
    else:
        sums = torch.zeros(3, device=p.device, dtype=acc)  # gap, pull, curvature
        for pb, gb, db, vb in blocks:
            precond, damp = preconditioner(vb)
            weighted = (db - gb).div_(precond * damp)  # M u, with M = 1 / (P (1 + a))
            sums += torch.stack([
                dot(gb, (db / precond).add_(pb, alpha=wd)),  # <g, d/P + wd θ>
                dot(weighted, gb + (damp - 1) * db),  # <u, M (g + a d)>
                dot(weighted, db - gb),  # <u, M u>
            ])
        gap, pull, curvature = sums[0] * gap_scale, sums[1], sums[2]
        beta = torch.where(curvature > 0, ((gap - pull) / curvature).clamp(0.0, beta_max),
                           torch.full_like(curvature, beta_max))
    keep = (1 - beta).to(p.dtype)
    for pb, gb, db, vb in blocks:
        precond, damp = preconditioner(vb)
        db.sub_((db - gb).mul_(keep).div_(damp))  # d <- d - (1 - β) u / (1 + a)
        if wd != 0:
            pb.mul_(1 - lr * wd)
        pb.addcdiv_(db, precond, value=-lr)
    prod.mul_(beta)


def _am_adamw_fused_tensor(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """:func:`_am_adamw_tensor` as two compiled passes over flat views (``fused=True`` off CPU float32)."""
    flat = (p.view(-1), g.view(-1), d.view(-1), v.view(-1))
    precond = dict(bc2_sqrt=float(bc2_sqrt), eps=float(eps), correction=(1 - beta_max * prod).to(p.dtype),
                   lam=float(lam))
    sums = _am_adamw_sums(*flat, beta2=float(beta2), wd=float(wd), want_sums=not first, **precond)
    if first:
        beta = torch.full((), beta_max, device=p.device, dtype=prod.dtype)
    else:
        sums = sums.to(prod.dtype)
        gap, pull, curvature = sums[0] * gap_scale, sums[1], sums[2]
        beta = torch.where(curvature > 0, ((gap - pull) / curvature).clamp(0.0, beta_max),
                           torch.full_like(curvature, beta_max))
    _am_adamw_update(*flat, keep=(1 - beta).to(p.dtype), lr=float(lr), wd=float(wd), **precond)
    prod.mul_(beta)


def _am_adamw_native_tensor(
    p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, prod: torch.Tensor, *, first: bool,
    beta_max: float, beta2: float, bc2_sqrt: float, eps: float, lr: float, wd: float, lam: float, gap_scale: float,
) -> None:
    """:func:`_am_adamw_tensor` with the C kernels (CPU float32, ``fused=True``), β in Python floats.

    Biases and gains take this path too: a kernel call costs microseconds, where the eager
    step's two dozen small torch ops per tensor cost more than the large tensors' kernels
    at two threads. β, 1 - β and the correction are computed in double here and rounded to
    float32 once (the eager path rounds each op to float32): rounding-level differences.
    """
    flat = (p.view(-1), g.view(-1), d.view(-1), v.view(-1))
    precond = dict(bc2_sqrt=float(bc2_sqrt), eps=float(eps), correction=1.0 - beta_max * prod.item(), lam=float(lam))
    sums = _native.am_adamw_sums(*flat, beta2=float(beta2), weight_decay=float(wd), want_sums=not first, **precond)
    beta = beta_max
    if not first:
        gap, pull, curvature = sums.tolist()
        if curvature > 0:  # as torch.where(curvature > 0, clamp(...), beta_max): a NaN ratio stays NaN
            beta = min(max((gap * gap_scale - pull) / curvature, 0.0), beta_max)
    _native.am_adamw_update(*flat, keep=1.0 - beta, lr=float(lr), weight_decay=float(wd), **precond)
    prod.mul_(beta)


@fused_kernel
def _am_adamw_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, beta2: torch.Tensor | float,
                   bc2_sqrt: torch.Tensor | float, eps: torch.Tensor | float, correction: torch.Tensor,
                   lam: torch.Tensor | float, wd: torch.Tensor | float, want_sums: bool) -> torch.Tensor | None:
    """Pass 1: the second moment, then β's three inner products (see ``_am_adamw_tensor``)."""
    v.mul_(beta2).add_(g * g * (1 - beta2))
    if not want_sums:
        return None
    precond = (v.sqrt() / bc2_sqrt + eps) * correction
    damp = precond * lam + 1
    weighted = (d - g) / (precond * damp)
    return torch.stack([(g * (d / precond + p * wd)).sum(), (weighted * (g + (damp - 1) * d)).sum(),
                        (weighted * (d - g)).sum()])


@fused_kernel
def _am_adamw_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *,
                     keep: torch.Tensor, bc2_sqrt: torch.Tensor | float, eps: torch.Tensor | float,
                     correction: torch.Tensor, lam: torch.Tensor | float, lr: torch.Tensor | float,
                     wd: torch.Tensor | float) -> None:
    """Pass 2: d <- d - (1 - β) u / (1 + a);  θ <- θ (1 - lr wd) - lr d / P."""
    precond = (v.sqrt() / bc2_sqrt + eps) * correction
    d.sub_((d - g) * keep / (precond * lam + 1))
    p.mul_(1 - lr * wd).sub_(d / precond * lr)


_PAPER = Paper("Adaptive Memory Momentum via a Model-Based Framework for Deep Learning Optimization",
               "2510.04988", 2025)

register(
    OptimizerSpec(
        name="am_sgd",
        cls=AMSGD,
        family="elementwise",
        defaults=dict(lr=0.1, model_lambda=0.1, beta_max=0.9, weight_decay=0.0),
        search_space=dict(lr=FloatRange(3e-3, 3.0), weight_decay=FloatRange(1e-6, 1e-3)),
        state_bytes=4.0,
        paper=_PAPER,
        description="SGD with a model-wide momentum coefficient from a two-plane proximal model",
    )
)

register(
    OptimizerSpec(
        name="am_adamw",
        cls=AMAdamW,
        family="elementwise",
        defaults=dict(lr=1e-3, betas=(0.89, 0.95), eps=1e-8, weight_decay=0.1, model_lambda=0.1),
        search_space=dict(lr=FloatRange(3e-4, 3e-2), weight_decay=FloatRange(1e-3, 0.3)),
        state_bytes=8.0,
        paper=_PAPER,
        description="AdamW with a per-tensor adaptive momentum coefficient (unofficial-code details)",
    )
)
