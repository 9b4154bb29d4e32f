"""AdamP's and SGDP's paths: the scale-invariance test before each tensor's update, foreach or fused.

The test reads the raw gradient and the current weight, so it comes before each update.
Tensors that are not projected (most of them) then take a purely elementwise update:
foreach and cache-blocked, or with ``fused=True`` one compiled pass per large tensor, run
right after that tensor's test so that the second read of θ and g comes from the cache.

On large CPU float32 matrices ``fused=True`` runs one pass of a C kernel that applies the
*unprojected* step and, from the θ and g it reads anyway, sums each row's <g, θ>, ‖g‖², ‖θ‖²
for the test. The test has to see every row before any element can be updated, so the kernel
speculates on its outcome: most tensors are never projected. A tensor that turns out projected
gets its θ back by inverting the unprojected step (``θ = (θ' + s u) / (1 - decay)``; the moments
need no fix, they do not depend on the projection) and then takes the projected step; the
inversion rounds, so that one step agrees with the exact path to float32 rounding, not bit for
bit. A tensor projected at its previous step is expected to stay so and takes the exact path
(test first, then the step), so a scale-invariant weight pays the inversion only on the step
where it first tests positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from optarena.optim._foreach import group_by_device_dtype
from optarena.optim.kernels.compiled import FusedKernel, fusable, fused_kernel
from optarena.optim.kernels.native import function, usable
from optarena.optim.kernels.paths import cache_blocks
from optarena.optim.scale_invariance import invariance_cosines, remove_radial, scale_invariant_view, view_from_cosines

__all__ = ["ProjectedUpdate", "adamp_unprojected", "c_adamp_step", "c_sgdp_step", "sgdp_unprojected"]

_cosines_kernel = fused_kernel(invariance_cosines)
_C_ADAMP, _C_SGDP = function("adamp"), function("sgdp")


def _scratch(p: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(sums=torch.empty(p.shape[0] if p.ndim >= 1 else 1, 3, dtype=torch.float64),
                cosines=torch.empty(2, dtype=torch.float64))


def c_adamp_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: float, beta2: float,
                 bc2_sqrt: float, eps: float, step_size: float, decay: float, nesterov: bool,
                 test_eps: float) -> torch.Tensor:
    """AdamP's unprojected step in one pass of the C kernel. Returns the scale-invariance test's float64
    cosines over θ before the update (:func:`~optarena.optim.scale_invariance.invariance_cosines`),
    ``test_eps`` the floor of the norms."""
    scratch = _scratch(p)
    _C_ADAMP(p, g, m, v, beta1=beta1, beta2=beta2, bc2_sqrt=bc2_sqrt, eps=eps, step_size=step_size, decay=decay,
             nesterov=nesterov, test_eps=test_eps, **scratch)
    return scratch["cosines"]


def c_sgdp_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: float, damp: float, lr: float,
                decay: float, nesterov: bool, test_eps: float) -> torch.Tensor:
    """SGDP's unprojected step in one pass of the C kernel; returns the cosines of :func:`c_adamp_step`."""
    scratch = _scratch(p)
    _C_SGDP(p, g, buf, mu=mu, damp=damp, lr=lr, decay=decay, nesterov=nesterov, test_eps=test_eps, **scratch)
    return scratch["cosines"]


@fused_kernel
def adamp_unprojected(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: torch.Tensor,
                      beta2: torch.Tensor, bc2_sqrt: torch.Tensor, eps: torch.Tensor, step_size: torch.Tensor,
                      decay: torch.Tensor, nesterov: bool) -> None:
    """The unprojected AdamP step (wd_ratio 1) in one pass."""
    m.mul_(beta1).add_(g * (1 - beta1))
    v.mul_(beta2).add_(g * g * (1 - beta2))
    first = m * beta1 + g * (1 - beta1) if nesterov else m
    p.mul_(1 - decay).sub_(first / (v.sqrt() / bc2_sqrt + eps) * step_size)


@fused_kernel
def sgdp_unprojected(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: torch.Tensor, damp: torch.Tensor,
                     lr: torch.Tensor, decay: torch.Tensor, nesterov: bool) -> None:
    """The unprojected SGDP step (wd_ratio 1) in one pass."""
    buf.mul_(mu).add_(g * damp)
    update = g + buf * mu if nesterov else buf
    p.mul_(1 - decay).sub_(update * lr)


def _fused_view(param: torch.Tensor, grad: torch.Tensor, delta: float, eps: float) -> tuple[int, int] | None:
    """:func:`scale_invariant_view` with the cosines in one compiled pass over large contiguous tensors."""
    if param.ndim >= 2:
        rows = param.shape[0]
        g2, p2 = grad.reshape(rows, -1), param.reshape(rows, -1)
        if fusable(p2, g2):
            ran, cosines = _cosines_kernel.call(g2, p2, eps=float(eps))
            if ran:
                return view_from_cosines(cosines, param.shape, delta)
    return scale_invariant_view(param, grad, delta, eps)


def _redo_projected(param: torch.Tensor, update: torch.Tensor, view: tuple[int, int], *, step: float,
                    decay: float, wd_ratio: float, eps: float) -> None:
    """θ' = θ (1 - decay) - step u was applied; recover θ and apply the projected step instead."""
    param.add_(update, alpha=step)
    if decay != 0:
        param.div_(1 - decay)
    projected = remove_radial(param, update, view, eps)
    if decay != 0:
        param.mul_(1 - decay * wd_ratio)
    param.add_(projected, alpha=-step)


@dataclass(frozen=True)
class ProjectedUpdate:
    """AdamP's or SGDP's update in its forms.

    ``block(*lists, group=, wd_ratio=, view=)``: the update on parallel lists ``(params, grads, *state)``,
    projected on ``view`` (one tensor) or not (``view=None``); ``direction(*tensors, **hyper)``: the
    unprojected direction ``u`` from the updated state; ``compiled``: the unprojected step in one
    compiled pass; ``c_step``: the same in C, fused with the test's sums (returns its cosines).
    """

    block: Callable[..., None]
    direction: Callable[..., torch.Tensor]
    compiled: FusedKernel
    c_step: Callable[..., torch.Tensor]

    def run(self, optimizer: torch.optim.Optimizer, group: dict[str, Any], tensors: tuple[list[torch.Tensor], ...],
            hyper: dict[str, Any], step: float) -> None:
        """One step of a param group on ``(params, grads, *state)``; ``hyper`` holds the kernels' keywords
        (floats as Python floats, ``decay`` the unprojected decay) and ``step`` the step size of ``u``."""
        if group.get("fused"):
            tensors = self._speculate(optimizer, group, tensors, hyper, step)
        self._test_then_step(group, tensors, hyper)

    def _test_then_step(self, group: dict[str, Any], tensors: tuple[list[torch.Tensor], ...],
                        hyper: dict[str, Any]) -> None:
        params, grads = tensors[0], tensors[1]
        delta, eps = group["delta"], group["eps"]
        kernel = self.compiled if group.get("fused") else None
        remaining = []
        for i, group_of_tensors in enumerate(zip(*tensors)):
            if kernel is None or kernel.disabled or not fusable(*group_of_tensors):
                remaining.append(i)
                continue
            view = _fused_view(params[i], grads[i], delta, eps)
            if view is not None:
                self.block(*([t] for t in group_of_tensors), group=group, wd_ratio=group["wd_ratio"], view=view)
            elif not kernel.call(*(t.view(-1) for t in group_of_tensors), **hyper)[0]:
                remaining.append(i)  # compilation failed: the foreach path below takes this tensor
        views = {i: scale_invariant_view(params[i], grads[i], delta, eps) for i in remaining}
        plain = [i for i in remaining if views[i] is None]
        for chunk in group_by_device_dtype(*([t[i] for i in plain] for t in tensors)):
            blocks = cache_blocks(chunk) if group["foreach"] else [tuple([t] for t in ts) for ts in zip(*chunk)]
            for block in blocks:
                self.block(*block, group=group, wd_ratio=1.0, view=None)
        for i, view in views.items():
            if view is not None:
                self.block(*([t[i]] for t in tensors), group=group, wd_ratio=group["wd_ratio"], view=view)

    def _speculate(self, optimizer: torch.optim.Optimizer, group: dict[str, Any],
                   tensors: tuple[list[torch.Tensor], ...], hyper: dict[str, Any],
                   step: float) -> tuple[list[torch.Tensor], ...]:
        """The one-pass C kernel on CPU float32 matrices, betting that the tensor is not projected
        (see the module docstring); ``state["scale_invariant"]`` remembers each tensor's last outcome.
        Returns the parallel lists of the tensors it left."""
        delta, eps, decay = group["delta"], group["eps"], hyper["decay"]
        rest: tuple[list[torch.Tensor], ...] = tuple([] for _ in tensors)
        for ts in zip(*tensors):
            if ts[0].ndim < 2 or decay >= 1 or not fusable(*ts) or not usable(*ts):
                for out, t in zip(rest, ts):
                    out.append(t)
                continue
            state = optimizer.state[ts[0]]
            if state.get("scale_invariant"):  # projected last step: test first, then the exact step
                view = scale_invariant_view(ts[0], ts[1], delta, eps)
                if view is None:
                    self.c_step(*ts, **hyper, test_eps=eps)
                else:
                    self.block(*([t] for t in ts), group=group, wd_ratio=group["wd_ratio"], view=view)
            else:
                view = view_from_cosines(self.c_step(*ts, **hyper, test_eps=eps), ts[0].shape, delta)
                if view is not None:
                    _redo_projected(ts[0], self.direction(*ts, **hyper), view, step=step, decay=decay,
                                    wd_ratio=group["wd_ratio"], eps=eps)
            state["scale_invariant"] = view is not None
        return rest
