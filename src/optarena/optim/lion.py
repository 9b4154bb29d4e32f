"""Lion: EvoLved Sign Momentum, and its Lion-κ generalisation.

Chen et al., "Symbolic Discovery of Optimization Algorithms" (arXiv:2302.06675), Alg. 2;
Chen, Liu, Liang, Liu, "Lion Secretly Solves Constrained Optimization, As Lyapunov
Predicts" (arXiv:2310.05898). Per parameter ``θ`` with gradient ``g``
and momentum ``m``::

    c <- beta1 m + (1 - beta1) g          # interpolation used for the update
    θ <- θ (1 - lr wd) - lr ∇κ(c)          # ∇κ = sign for Lion
    m <- beta2 m + (1 - beta2) g          # momentum tracks with the slower beta2

Lion-κ replaces ``sign`` (the gradient of κ(x) = ‖x‖₁) by a subgradient of another convex
κ; with weight decay ``wd`` Lion-κ then minimises ``f(x) + κ*(x)``-type objectives (for
sign: ``f`` subject to ‖x‖_∞ <= 1/wd). ``kappa`` picks the map:

- ``"sign"`` (default, Lion): κ = ‖x‖₁, ∇κ = sign(x), with sign(0) = 0.
- ``"l2"``: κ = √n ‖x‖₂ per tensor, ∇κ = √n x / ‖x‖₂ (normalised momentum).
- ``"identity"``: κ = ½‖x‖², ∇κ = x (momentum SGD with decoupled decay).
- ``"smooth_sign"``: κ = Σ sqrt(x² + e), ∇κ = x / sqrt(x² + e) with e = ``kappa_eps``.
- ``"nuclear"``: κ = √max(rows, cols) ‖X‖_* on the ``(shape[0], -1)`` view, ∇κ =
  √max(rows, cols) U Vᵀ, computed with Newton–Schulz as in Muon ("Muon is a nuclear
  Lion-κ"); vectors are treated as one row, which gives the ``"l2"`` map.
- any callable ``tensor -> tensor`` (it must return a new tensor or modify its argument).

The √n and √max(rows, cols) factors are our choice, not the paper's: they give every
built-in map an update of RMS 1 on random inputs, as sign has, so one learning rate
range serves all of them. The list above is the families of κ named in the paper's abstract.

One state tensor per parameter (4 bytes/param for float32). Typical lr is 3-10x smaller
than AdamW's and weight decay 3-10x larger, so ``lr * wd`` stays comparable.

``fused=True`` (sign map only) runs the whole update as one pass per tensor
(:func:`optarena.optim.kernels.elementwise.lion`): it reads θ, g, m and writes θ, m once,
the least memory traffic the method allows.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import GroupwiseOptimizer, zeros_state
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.orthogonalize import orthogonalize_many
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_choice, check_hparams, check_positive

__all__ = ["KAPPAS", "Lion"]

KAPPAS = ("sign", "l2", "identity", "smooth_sign", "nuclear")


class Lion(GroupwiseOptimizer):
    """Lion and Lion-κ (see module docstring). Defaults from the paper: lr=1e-4, betas=(0.9, 0.99).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0).
        betas: (beta1 for the update interpolation, beta2 for the momentum), each in [0, 1).
        weight_decay: decoupled weight decay, multiplied by ``lr`` (>= 0).
        kappa: the direction map, one of ``KAPPAS`` or a callable (default ``"sign"``).
        kappa_eps: ``e`` of the ``"smooth_sign"`` map (> 0).
        foreach: use multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one pass per tensor (default False; :mod:`optarena.optim.kernels`); ``kappa="sign"`` only.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        kappa: str | Callable[[torch.Tensor], torch.Tensor] = "sign",
        kappa_eps: float = 1e-8,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("Lion", lr=lr, betas=betas, weight_decay=weight_decay)
        if not callable(kappa):
            check_choice("Lion", "kappa", kappa, KAPPAS)
        check_positive("Lion", "kappa_eps", kappa_eps)
        if fused and kappa != "sign":
            raise ValueError(f"Lion fused=True supports kappa='sign' only, got kappa={kappa!r}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, kappa=kappa,
                        kappa_eps=kappa_eps, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        (exp_avgs,) = zeros_state(self, params, "exp_avg")
        kappa = group.get("kappa", "sign")
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        hyper = dict(lr=lr, betas=(beta1, beta2), weight_decay=wd, kappa=kappa,
                     kappa_eps=group.get("kappa_eps", 1e-8))
        kernel_hyper = dict(lr=float(lr), beta1=float(beta1), beta2=float(beta2), weight_decay=float(wd))
        _LION.run(group, (params, grads, exp_avgs), hyper, kernel_hyper if kappa == "sign" else None,
                  blocked=kappa in ("sign", "identity", "smooth_sign"))  # l2, nuclear, callables: whole tensors


def kappa_direction(
    updates: list[torch.Tensor], kappa: str | Callable[[torch.Tensor], torch.Tensor], kappa_eps: float = 1e-8
) -> list[torch.Tensor]:
    """Apply the Lion-κ direction map ∇κ to each tensor; may work in place, returns the results."""
    if callable(kappa):
        return [kappa(u) for u in updates]
    if kappa == "sign":
        torch._foreach_sign_(updates)
    elif kappa == "identity":
        pass
    elif kappa == "smooth_sign":
        denom = torch._foreach_mul(updates, updates)
        torch._foreach_add_(denom, kappa_eps)
        torch._foreach_sqrt_(denom)
        torch._foreach_div_(updates, denom)
    elif kappa == "l2":
        norms = torch._foreach_norm(updates)
        scales = [math.sqrt(u.numel()) / n.clamp_min(1e-30) for u, n in zip(updates, norms)]
        torch._foreach_mul_(updates, scales)
    elif kappa == "nuclear":
        views = [u.reshape(u.shape[0], -1) if u.ndim >= 2 else u.reshape(1, -1) for u in updates]
        ortho = orthogonalize_many(views)
        updates = [o.reshape(u.shape).to(u.dtype).mul_(math.sqrt(max(v.shape)))
                   for o, u, v in zip(ortho, updates, views)]
    else:
        raise ValueError(f"Lion kappa must be one of {KAPPAS} or a callable, got kappa={kappa!r}")
    return updates


def _lion_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    *, lr: float, betas: tuple[float, float], weight_decay: float,
    kappa: str | Callable[[torch.Tensor], torch.Tensor] = "sign", kappa_eps: float = 1e-8,
) -> None:
    beta1, beta2 = betas
    for p, g, m in zip(params, grads, exp_avgs):
        p.mul_(1 - lr * weight_decay)
        if kappa == "sign":  # + 0 g: a NaN or inf gradient reaches θ (torch.sign(NaN) is 0)
            p.add_(torch.lerp(m, g, 1 - beta1).sign_().add_(g, alpha=0), alpha=-lr)
        else:
            (direction,) = kappa_direction([torch.lerp(m, g, 1 - beta1)], kappa, kappa_eps)
            p.add_(direction, alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _lion_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    *, lr: float, betas: tuple[float, float], weight_decay: float,
    kappa: str | Callable[[torch.Tensor], torch.Tensor] = "sign", kappa_eps: float = 1e-8,
) -> None:
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    update = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    update = kappa_direction(update, kappa, kappa_eps)
    if kappa == "sign":  # + 0 g: a NaN or inf gradient reaches θ (torch.sign(NaN) is 0)
        torch._foreach_add_(update, grads, alpha=0)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)


register(
    OptimizerSpec(
        name="lion",
        cls=Lion,
        family="elementwise",
        defaults=dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1),
        search_space=dict(lr=FloatRange(3e-5, 3e-3), weight_decay=FloatRange(1e-3, 1.0)),
        state_bytes=4.0,
        paper=Paper("Symbolic Discovery of Optimization Algorithms", "2302.06675", 2023),
        description="sign of interpolated momentum (Lion-κ maps via kappa=); one state buffer",
    )
)

_LION = ElementwiseUpdate(_lion_single_tensor, _lion_foreach, elementwise.lion)
