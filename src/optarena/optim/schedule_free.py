"""Schedule-Free AdamW: no learning-rate schedule, an online average to evaluate at.

Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled"
(arXiv:2405.15682); reference code facebookresearch/schedule_free
(``adamw_schedulefree.py``, v1.3 behaviour). The AlgoPerf 2024
self-tuning track winner, here as an external anchor.

Three sequences per parameter: ``z`` (the base Adam-style iterate), ``x`` (a weighted
average of the ``z``'s, where the model is **evaluated**) and ``y = (1 - b1) z + b1 x``
(where gradients are **computed**). The parameter tensor holds ``y`` in train mode and
``x`` in eval mode; ``x`` itself is never stored. With ``k`` the 0-based step::

    lr_k   = lr min(1, (k + 1) / warmup_steps);   lr_max = max(lr_max, lr_k)
    w      = (k + 1)^r lr_max^weight_lr_power;    c = w / Σ w
    v     <- b2 v + (1 - b2) g²
    ĝ      = g / (sqrt(v / (1 - b2^(k+1))) + eps) + wd y      # decay evaluated at y
    y     <- (1 - c) y + c z + lr_k (b1 (1 - c) - 1) ĝ        # in place, x implicit
    z     <- z - lr_k ĝ
    eval():  θ <- x = y + (1 - 1/b1)(z - y);   train(): θ <- y = x + (1 - b1)(z - x)

Call ``optimizer.train()`` before training steps and ``optimizer.eval()`` before
evaluating or checkpointing the model (the arena's trainer does both); ``step()`` raises
in eval mode. Use it with a constant learning rate: the registry marks it
``uses_schedule=False``. BatchNorm statistics, if any, must be recomputed at ``x``.

State: z and v, 8 bytes/param in fp32.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import group_by_device_dtype, groups_with_grads, run_closure
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.hooks import TrainingHooks
from optarena.optim.registry import Categorical, FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_hparams, check_int, check_nonnegative, check_number

__all__ = ["ScheduleFreeAdamW"]


class ScheduleFreeAdamW(torch.optim.Optimizer, TrainingHooks):
    """Schedule-Free AdamW (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0, default 0.0025); 1-10x the AdamW-with-schedule value.
        betas: (b1 interpolation, b2 second moment), b1 in (0, 1), b2 in [0, 1) (default (0.9, 0.999)).
        eps: denominator floor (default 1e-8).
        weight_decay: decay applied to ``y`` inside the normalised gradient (default 0).
        warmup_steps: linear warmup of the learning rate, in steps (default 0).
        r: polynomial weighting of the average (default 0).
        weight_lr_power: weight of ``lr_max`` in the average (default 2).
        foreach: multi-tensor kernels (default True); ``False`` loops over tensors.
        fused: one pass per tensor (default False; :mod:`optarena.optim.kernels`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_hparams("ScheduleFreeAdamW", lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        check_number("ScheduleFreeAdamW", "betas[0]", betas[0], 0.0, 1.0, low_open=True, high_open=True)
        check_int("ScheduleFreeAdamW", "warmup_steps", warmup_steps, 0)
        check_nonnegative("ScheduleFreeAdamW", "r", r)
        check_nonnegative("ScheduleFreeAdamW", "weight_lr_power", weight_lr_power)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
                        r=r, weight_lr_power=weight_lr_power, foreach=foreach, fused=fused,
                        train_mode=True, step=0, weight_sum=0.0, lr_max=0.0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = group["betas"][0]
            weight = 1 - beta1 if to_train else 1 - 1 / beta1
            params = [p for p in group["params"] if "z" in self.state[p]]
            zs = [self.state[p]["z"] for p in params]
            for ps, zz in group_by_device_dtype(params, zs):
                torch._foreach_lerp_(ps, zz, weight)
            group["train_mode"] = to_train

    def train(self) -> None:
        """Put ``y`` (the gradient point) into the parameters; call before training steps."""
        self._switch(True)

    def eval(self) -> None:
        """Put ``x`` (the average) into the parameters; call before evaluation or checkpointing."""
        self._switch(False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if not all(g["train_mode"] for g in self.param_groups):
            raise RuntimeError("ScheduleFreeAdamW.step() called in eval mode; call optimizer.train() first")
        loss = run_closure(closure)
        for group, params, grads in groups_with_grads(self):
            k = group["step"]
            warmup = group["warmup_steps"]
            lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
            group["lr_max"] = lr_max = max(group["lr_max"], lr)
            weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
            group["weight_sum"] += weight
            ckp = weight / group["weight_sum"] if group["weight_sum"] != 0 else 0.0
            group["step"] = k + 1
            zs, exp_avg_sqs = [], []
            for p in params:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone()
                    state["exp_avg_sq"] = torch.zeros_like(p)
                zs.append(state["z"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            scalars = dict(lr=float(lr), ckp=float(ckp), beta1=float(group["betas"][0]),
                           beta2=float(group["betas"][1]), bc2_sqrt=math.sqrt(1 - group["betas"][1] ** (k + 1)),
                           eps=float(group["eps"]), weight_decay=float(group["weight_decay"]))
            _SF_ADAMW.run(group, (params, grads, zs, exp_avg_sqs), scalars, scalars)
        return loss


def _sf_adamw_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    *, lr: float, ckp: float, beta1: float, beta2: float, bc2_sqrt: float, eps: float, weight_decay: float,
) -> None:
    for y, g, z, v in zip(params, grads, zs, exp_avg_sqs):
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        normalized = g / v.sqrt().div_(bc2_sqrt).add_(eps)
        if weight_decay != 0:
            normalized.add_(y, alpha=weight_decay)
        y.lerp_(z, ckp)
        y.add_(normalized, alpha=lr * (beta1 * (1 - ckp) - 1))
        z.sub_(normalized, alpha=lr)


def _sf_adamw_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], zs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    *, lr: float, ckp: float, beta1: float, beta2: float, bc2_sqrt: float, eps: float, weight_decay: float,
) -> None:
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    normalized = torch._foreach_div(grads, denom)
    if weight_decay != 0:
        torch._foreach_add_(normalized, params, alpha=weight_decay)
    torch._foreach_lerp_(params, zs, ckp)
    torch._foreach_add_(params, normalized, alpha=lr * (beta1 * (1 - ckp) - 1))
    torch._foreach_sub_(zs, normalized, alpha=lr)


register(
    OptimizerSpec(
        name="schedule_free_adamw",
        cls=ScheduleFreeAdamW,
        family="elementwise",
        defaults=dict(lr=2.5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, warmup_steps=20),
        search_space=dict(lr=FloatRange(5e-4, 5e-2), warmup_steps=Categorical((0, 20, 100))),
        state_bytes=8.0,
        paper=Paper("The Road Less Scheduled", "2405.15682", 2024),
        description="AdamW without a schedule: gradients at an interpolation, evaluation at an online average",
        uses_schedule=False,
    )
)

_SF_ADAMW = ElementwiseUpdate(_sf_adamw_single_tensor, _sf_adamw_foreach, elementwise.sf_adamw)
