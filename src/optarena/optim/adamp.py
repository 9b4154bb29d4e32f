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

With ``fused=True``, large CPU float32 tensors take one pass of a C kernel
(:mod:`optarena.optim._native`) that applies the *unprojected* step and, from the θ and g it
reads anyway, sums each row's <g, θ>, ‖g‖², ‖θ‖² for the test. The test has to see every row
before any element can be updated, so the kernel speculates on its outcome: most tensors are
never projected. A tensor that turns out projected gets its θ back by inverting the
unprojected step (``θ = (θ' + s u) / (1 - decay)``, the moments need no fix: they do not
depend on the projection) and then the projected step; the inversion rounds, so that one
step agrees with the exact path to float32 rounding (about an ulp of θ), not bit for bit. A
tensor projected at its previous step is expected to stay so and takes the exact path (test
first, then the step), so a scale-invariant weight pays the inversion only on the step where
it first tests positive. Other devices and dtypes run two compiled passes
(:mod:`optarena.optim._fused`): the test's reductions, then the update.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Iterable

import torch
from optarena.optim import _native
from optarena.optim._foreach import cache_blocks, collect_grads, group_by_device_dtype, run_closure, zeros_state
from optarena.optim._fused import FusedKernel, fusable, fused_kernel
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_hparams, check_number, check_positive, check_unit_interval

__all__ = ["AdamP", "SGDP", "project_scale_invariant", "scale_invariant_view"]


def _invariance_cosines(g2: torch.Tensor, p2: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """[largest per-row |cos(g, θ)|, whole-layer |cos(g, θ)|] of ``(rows, cols)`` views.

    One set of per-row reductions, accumulated in float32 or wider; the layer's cosine
    comes from their sums. Same arithmetic as ``F.cosine_similarity``: ``<g, θ> /
    (max(‖g‖, eps) max(‖θ‖, eps))``.
    """
    if g2.dtype != torch.float64:
        g2, p2 = g2.float(), p2.float()
    dots, g_sq, p_sq = (g2 * p2).sum(dim=1), (g2 * g2).sum(dim=1), (p2 * p2).sum(dim=1)
    channel = dots.abs() / (g_sq.sqrt().clamp_min(eps) * p_sq.sqrt().clamp_min(eps))
    layer = dots.sum().abs() / (g_sq.sum().sqrt().clamp_min(eps) * p_sq.sum().sqrt().clamp_min(eps))
    return torch.stack([channel.max(), layer])


_invariance_cosines_fused = fused_kernel(_invariance_cosines)


def scale_invariant_view(
    param: torch.Tensor, grad: torch.Tensor, delta: float, eps: float, fused: bool = False
) -> tuple[int, int] | None:
    """The view (``(rows, -1)`` per channel, else ``(1, -1)`` for the layer) on which ``param`` looks
    scale-invariant, or None. Tensors with fewer than two dimensions never are.

    ``fused`` computes the cosines (:func:`_invariance_cosines`) in one compiled pass over
    large contiguous tensors.
    """
    if param.ndim < 2:
        return None
    rows = param.shape[0]
    g2, p2 = grad.reshape(rows, -1), param.reshape(rows, -1)
    ran, cosines = False, None
    if fused and fusable(p2, g2):
        ran, cosines = _invariance_cosines_fused.call(g2, p2, eps=float(eps))
    return _view_from_cosines(cosines if ran else _invariance_cosines(g2, p2, eps), param.shape, delta)


def _view_from_cosines(cosines: torch.Tensor, shape: torch.Size, delta: float) -> tuple[int, int] | None:
    channel, layer = cosines.tolist()
    rows, numel = shape[0], math.prod(shape)
    if channel < delta / math.sqrt(numel // rows):
        return (rows, -1)
    if layer < delta / math.sqrt(numel):
        return (1, -1)
    return None


def _remove_radial(param: torch.Tensor, update: torch.Tensor, view: tuple[int, int], eps: float) -> torch.Tensor:
    """u - θ̂ <θ̂, u> on ``view``, with θ̂ = θ / (‖θ‖ + eps)."""
    p_view = param.reshape(view)
    p_unit = p_view / p_view.norm(dim=1, keepdim=True).add_(eps)
    u_view = update.reshape(view)
    radial = (p_unit * u_view).sum(dim=1, keepdim=True)
    return (u_view - p_unit * radial).view_as(update)


def project_scale_invariant(
    param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[torch.Tensor, float]:
    """Remove the radial component of ``update`` if ``param`` looks scale-invariant.

    Returns the (possibly new) update and the weight-decay ratio to use. Tensors with fewer
    than two dimensions are returned unchanged with ratio 1.
    """
    view = scale_invariant_view(param, grad, delta, eps)
    if view is None:
        return update, 1.0
    return _remove_radial(param, update, view, eps), wd_ratio


def _test_then_step(
    group: dict[str, Any], tensors: tuple[list[torch.Tensor], ...], block_step: Callable[..., None],
    kernel: FusedKernel | None, hyper: dict[str, Any],
) -> None:
    """The step shared by AdamP and SGDP on parallel lists ``(params, grads, *state)``.

    The scale-invariance test reads the raw gradient and the current weight, so it comes
    before each update. Tensors that are not projected (most of them) then take a purely
    elementwise path: foreach and cache-blocked, or with ``kernel`` (``fused=True``) one
    compiled pass per large tensor, run right after that tensor's test so that the second
    read of θ and g comes from the cache rather than memory. Projected tensors take
    ``block_step`` with their view.
    """
    params, grads = tensors[0], tensors[1]
    delta, eps = group["delta"], group["eps"]
    remaining = []
    for i, group_of_tensors in enumerate(zip(*tensors)):
        if kernel is None or kernel.disabled or not fusable(*group_of_tensors):
            remaining.append(i)
            continue
        view = scale_invariant_view(params[i], grads[i], delta, eps, fused=True)
        if view is not None:
            block_step(*([t] for t in group_of_tensors), group=group, wd_ratio=group["wd_ratio"], view=view)
        elif not kernel.call(*(t.view(-1) for t in group_of_tensors), **hyper)[0]:
            remaining.append(i)  # compilation failed: the foreach path below takes this tensor
    views = {i: scale_invariant_view(params[i], grads[i], delta, eps) for i in remaining}
    plain = [i for i in remaining if views[i] is None]
    for chunk in group_by_device_dtype(*([t[i] for i in plain] for t in tensors)):
        blocks = cache_blocks(chunk) if group["foreach"] else [tuple([t] for t in ts) for ts in zip(*chunk)]
        for block in blocks:
            block_step(*block, group=group, wd_ratio=1.0, view=None)
    for i, view in views.items():
        if view is not None:
            block_step(*([t[i]] for t in tensors), group=group, wd_ratio=group["wd_ratio"], view=view)


def _speculate(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], tensors: tuple[list[torch.Tensor], ...],
    native_step: Callable[..., torch.Tensor], block_step: Callable[..., None], update_of: Callable[..., torch.Tensor],
    hyper: dict[str, Any], step: float,
) -> tuple[list[torch.Tensor], ...]:
    """``fused=True`` on CPU float32 matrices: the one-pass C kernel, betting that the tensor is not
    projected (see the module docstring). Returns the parallel lists of the tensors it left.

    ``update_of(*tensors)`` recomputes the unprojected update ``u`` from the new state, ``step``
    is its step size; ``state["scale_invariant"]`` remembers each tensor's last outcome.
    """
    delta, eps, decay = group["delta"], group["eps"], hyper["decay"]
    rest: tuple[list[torch.Tensor], ...] = tuple([] for _ in tensors)
    for ts in zip(*tensors):
        if ts[0].ndim < 2 or decay >= 1 or not fusable(*ts) or not _native.usable(*ts):
            for out, t in zip(rest, ts):
                out.append(t)
            continue
        state = optimizer.state[ts[0]]
        if state.get("scale_invariant"):  # projected last step: test first, then the exact step
            view = scale_invariant_view(ts[0], ts[1], delta, eps)
            if view is None:
                native_step(*ts, **hyper, test_eps=eps)
            else:
                block_step(*([t] for t in ts), group=group, wd_ratio=group["wd_ratio"], view=view)
        else:
            view = _view_from_cosines(native_step(*ts, **hyper, test_eps=eps), ts[0].shape, delta)
            if view is not None:
                _redo_projected(ts[0], update_of(*ts), view, step=step, decay=decay, wd_ratio=group["wd_ratio"],
                                eps=eps)
        state["scale_invariant"] = view is not None
    return rest


def _redo_projected(param: torch.Tensor, update: torch.Tensor, view: tuple[int, int], *, step: float,
                    decay: float, wd_ratio: float, eps: float) -> None:
    """θ' = θ (1 - decay) - step u was applied; recover θ and apply the projected step instead."""
    param.add_(update, alpha=step)
    if decay != 0:
        param.div_(1 - decay)
    projected = _remove_radial(param, update, view, eps)
    if decay != 0:
        param.mul_(1 - decay * wd_ratio)
    param.add_(projected, alpha=-step)


def _check_common(name: str, lr: float, weight_decay: float, delta: float, wd_ratio: float, eps: float) -> None:
    check_hparams(name, lr=lr, weight_decay=weight_decay)
    check_positive(name, "delta", delta)
    check_number(name, "wd_ratio", wd_ratio, 0.0, 1.0)
    check_positive(name, "eps", eps)


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
        fused: one C-kernel pass per large CPU float32 matrix, compiled passes elsewhere
            (default False; compiles at the first step, see the module docstring).
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

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = collect_grads("AdamP", group["params"])
            if not params:
                continue
            group["step"] = group.get("step", 0) + 1
            exp_avgs, exp_avg_sqs = zeros_state(self, params, "exp_avg", "exp_avg_sq")
            fused = bool(group.get("fused"))
            beta1, beta2 = group["betas"]
            hyper = dict(beta1=float(beta1), beta2=float(beta2), bc2_sqrt=math.sqrt(1 - beta2 ** group["step"]),
                         eps=float(group["eps"]), step_size=float(group["lr"]) / (1 - beta1 ** group["step"]),
                         decay=float(group["lr"] * group["weight_decay"]), nesterov=bool(group["nesterov"]))
            tensors = (params, grads, exp_avgs, exp_avg_sqs)
            if fused:
                tensors = _speculate(self, group, tensors, _native.adamp_step, _adamp_block,
                                     partial(_adamp_update, **hyper), hyper, hyper["step_size"])
            _test_then_step(group, tensors, _adamp_block, _adamp_fused if fused else None, hyper)
        return loss


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
        updates = [_remove_radial(params[0], updates[0], view, eps)]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd * wd_ratio)
    torch._foreach_add_(params, updates, alpha=-lr / (1 - beta1**step))


def _adamp_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: float,
                  bc2_sqrt: float, eps: float, nesterov: bool, **_: Any) -> torch.Tensor:
    """AdamP's unprojected direction u from the updated moments (the projection's input)."""
    first = torch.lerp(m, g, 1 - beta1) if nesterov else m
    return first / v.sqrt().div_(bc2_sqrt).add_(eps)


@fused_kernel
def _adamp_fused(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: torch.Tensor,
                 beta2: torch.Tensor, bc2_sqrt: torch.Tensor, eps: torch.Tensor, step_size: torch.Tensor,
                 decay: torch.Tensor, nesterov: bool) -> None:
    """The unprojected AdamP step (wd_ratio 1) of ``_adamp_block`` in one pass."""
    m.mul_(beta1).add_(g * (1 - beta1))
    v.mul_(beta2).add_(g * g * (1 - beta2))
    first = m * beta1 + g * (1 - beta1) if nesterov else m
    p.mul_(1 - decay).sub_(first / (v.sqrt() / bc2_sqrt + eps) * step_size)


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

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = collect_grads("SGDP", group["params"])
            (bufs,) = zeros_state(self, params, "momentum_buffer")
            fused = bool(group.get("fused"))
            mu, lr = group["momentum"], group["lr"]
            hyper = dict(mu=float(mu), damp=float(1 - group["dampening"]), lr=float(lr),
                         decay=float(lr * group["weight_decay"] / (1 - mu)), nesterov=bool(group["nesterov"]))
            tensors = (params, grads, bufs)
            if fused:
                tensors = _speculate(self, group, tensors, _native.sgdp_step, _sgdp_block,
                                     partial(_sgdp_update, mu=float(mu), nesterov=hyper["nesterov"]), hyper, float(lr))
            _test_then_step(group, tensors, _sgdp_block, _sgdp_fused if fused else None, hyper)
        return loss


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
        updates = [_remove_radial(params[0], updates[0], view, group["eps"])]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd * wd_ratio / (1 - mu))
    torch._foreach_add_(params, updates, alpha=-lr)


def _sgdp_update(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: float, nesterov: bool) -> torch.Tensor:
    """SGDP's unprojected direction u from the updated buffer."""
    return g.add(buf, alpha=mu) if nesterov else buf


@fused_kernel
def _sgdp_fused(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: torch.Tensor, damp: torch.Tensor,
                lr: torch.Tensor, decay: torch.Tensor, nesterov: bool) -> None:
    """The unprojected SGDP step (wd_ratio 1) of ``_sgdp_block`` in one pass."""
    buf.mul_(mu).add_(g * damp)
    update = g + buf * mu if nesterov else buf
    p.mul_(1 - decay).sub_(update * lr)


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
