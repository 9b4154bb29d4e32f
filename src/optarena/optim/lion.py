"""Lion: EvoLved Sign Momentum.

Chen et al., "Symbolic Discovery of Optimization Algorithms" (arXiv:2302.06675), Alg. 2;
ALGORITHMS.md §9. Per parameter ``θ`` with gradient ``g`` and momentum ``m``::

    c <- beta1 m + (1 - beta1) g          # interpolation used for the update
    θ <- θ (1 - lr wd) - lr sign(c)
    m <- beta2 m + (1 - beta2) g          # momentum tracks with the slower beta2

One state tensor per parameter (4 bytes/param for float32). Typical lr is 3-10x smaller
than AdamW's and weight decay 3-10x larger, so ``lr * wd`` stays comparable.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import collect_grads, group_by_device_dtype
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register

__all__ = ["Lion"]


class Lion(torch.optim.Optimizer):
    """Lion (see module docstring). Defaults from the paper: lr=1e-4, betas=(0.9, 0.99)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        foreach: bool = True,
    ) -> None:
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"Lion lr must be a float >= 0, got lr={lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion betas must be in [0, 1), got betas={betas!r}")
        if weight_decay < 0.0:
            raise ValueError(f"Lion weight_decay must be >= 0, got weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = collect_grads("Lion", group["params"])
            exp_avgs = []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avgs.append(state["exp_avg"])
            step_fn = _lion_foreach if group["foreach"] else _lion_single_tensor
            for chunk in group_by_device_dtype(params, grads, exp_avgs):
                step_fn(*chunk, lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"])
        return loss


def _lion_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    *, lr: float, betas: tuple[float, float], weight_decay: float,
) -> None:
    beta1, beta2 = betas
    for p, g, m in zip(params, grads, exp_avgs):
        p.mul_(1 - lr * weight_decay)
        p.add_(torch.lerp(m, g, 1 - beta1).sign_(), alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _lion_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    *, lr: float, betas: tuple[float, float], weight_decay: float,
) -> None:
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    update = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_sign_(update)
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
        description="sign of interpolated momentum; one state buffer",
    )
)
