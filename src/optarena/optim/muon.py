"""Muon: momentum orthogonalised by Newton–Schulz, for the hidden matrices of a network.

Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein, "Muon: An optimizer for hidden
layers in neural networks" (2024, kellerjordan.github.io/posts/muon); the
``match_rms_adamw`` scale is from Liu et al., "Muon is Scalable for LLM Training"
(arXiv:2502.16982). ALGORITHMS.md §1.

For a group with ``matrix=True`` (the default), per parameter ``W`` with gradient ``G``::

    M <- beta M + (1 - beta) G                       # EMA momentum (Keller's form)
    U <- (1 - beta) G + beta M   if nesterov else M
    O <- NewtonSchulz5(U reshaped to (rows, -1))     # batched over equal shapes
    W <- W (1 - lr wd) - lr s O                      # decay with the raw lr

with ``s`` from ``scale``: ``"original"`` sqrt(max(1, rows/cols)); ``"match_rms_adamw"``
0.2 sqrt(max(rows, cols)); ``"none"`` 1. Groups with ``matrix=False`` (embeddings,
readout, biases, norm gains) get the AdamW rule with ``adamw_betas`` / ``adamw_eps`` and
the group's own ``lr`` and ``weight_decay``, so one object serves a whole model.

Deviations from the reference code: ``p.grad`` is never modified in place (the
reference's Nesterov blend overwrites it), and on CPU Newton–Schulz runs in float32 (or
float64 for float64 parameters) unless ``ns_dtype`` says otherwise, because bf16 matmuls
are slow on most CPUs. ``torch.optim.Muon`` uses sum momentum ``B = mu B + G``; this
differs from the EMA by the factor ``1 - mu``, which the normalisation removes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import adamw_rule, collect_grads
from optarena.optim.orthogonalize import MUON_COEFFICIENTS, orthogonalize_many
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register

__all__ = ["MUON_SCALES", "Muon", "muon_scale"]

MUON_SCALES = ("original", "match_rms_adamw", "none")


def muon_scale(shape: torch.Size | tuple[int, ...], scale: str) -> float:
    """Learning-rate multiplier for an orthogonalised update of a (rows, cols...) weight."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    if scale == "original":
        return math.sqrt(max(1.0, rows / cols))
    if scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if scale == "none":
        return 1.0
    raise ValueError(f"scale must be one of {MUON_SCALES}, got {scale!r}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Muon {name} must be in [0, 1), got {name}={value}")


class Muon(torch.optim.Optimizer):
    """Muon for ``matrix=True`` groups, AdamW for ``matrix=False`` groups (see module docstring).

    Args:
        params: tensors or param-group dicts; matrix groups may hold only tensors with
            ndim >= 2 (conv weights are flattened to ``(out, -1)`` for the iteration).
        lr: learning rate (default 0.02, Keller's value for ``scale="original"``).
        momentum: EMA coefficient beta in [0, 1) (default 0.95).
        nesterov: use the Nesterov blend (default True).
        ns_steps: Newton–Schulz iterations (default 5).
        ns_coefficients: quintic coefficients (a, b, c).
        ns_dtype: compute dtype of Newton–Schulz; ``None`` picks bf16 on accelerators, fp32+ on CPU.
        exact_orthogonalization: use the SVD polar factor instead of Newton–Schulz (slow; a reference).
        weight_decay: decoupled weight decay, multiplied by the raw ``lr`` (default 0).
        scale: ``"original"``, ``"match_rms_adamw"`` or ``"none"``.
        adamw_betas, adamw_eps: AdamW rule for ``matrix=False`` groups.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        exact_orthogonalization: bool = False,
        weight_decay: float = 0.0,
        scale: str = "original",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
    ) -> None:
        if not (isinstance(lr, (int, float)) and lr >= 0.0):
            raise ValueError(f"Muon lr must be a float >= 0, got lr={lr!r}")
        _check_unit_interval("momentum", momentum)
        if not (isinstance(ns_steps, int) and 0 <= ns_steps <= 100):
            raise ValueError(f"Muon ns_steps must be an int in [0, 100], got ns_steps={ns_steps!r}")
        if len(ns_coefficients) != 3:
            raise ValueError(f"Muon ns_coefficients must be three floats (a, b, c), got {ns_coefficients!r}")
        if weight_decay < 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0, got weight_decay={weight_decay}")
        if scale not in MUON_SCALES:
            raise ValueError(f"Muon scale must be one of {MUON_SCALES}, got scale={scale!r}")
        if len(adamw_betas) != 2:
            raise ValueError(f"Muon adamw_betas must be a pair, got adamw_betas={adamw_betas!r}")
        for i, beta in enumerate(adamw_betas):
            _check_unit_interval(f"adamw_betas[{i}]", beta)
        if adamw_eps < 0.0:
            raise ValueError(f"Muon adamw_eps must be >= 0, got adamw_eps={adamw_eps}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype,
            exact_orthogonalization=exact_orthogonalization, weight_decay=weight_decay, scale=scale,
            adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps, matrix=True,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["matrix"]:
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(
                            f"Muon matrix groups take tensors with ndim >= 2, got shape {tuple(p.shape)}; "
                            "put biases, gains and embeddings in a group with matrix=False "
                            "(optarena.optim.create_optimizer('muon', model) does this for you)"
                        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["matrix"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads("Muon", group["params"])
        if not params:
            return
        beta = group["momentum"]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        torch._foreach_lerp_(bufs, grads, 1 - beta)
        updates = torch._foreach_lerp(grads, bufs, beta) if group["nesterov"] else bufs
        ortho = orthogonalize_many(
            [u.reshape(u.shape[0], -1) for u in updates],
            steps=group["ns_steps"], coefficients=group["ns_coefficients"],
            dtype=group["ns_dtype"], exact=group["exact_orthogonalization"],
        )
        lr, wd = group["lr"], group["weight_decay"]
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        for p, o in zip(params, ortho):
            p.add_(o.view_as(p), alpha=-lr * muon_scale(p.shape, group["scale"]))

    def _adamw_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads("Muon", group["params"])
        buckets: dict[Any, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            buckets[(p.device, p.dtype, int(state["step"]))].append(i)
        for (_, _, step), idx in buckets.items():
            adamw_rule(
                [params[i] for i in idx], [grads[i] for i in idx],
                [self.state[params[i]]["exp_avg"] for i in idx],
                [self.state[params[i]]["exp_avg_sq"] for i in idx],
                step=step, lr=group["lr"], betas=group["adamw_betas"], eps=group["adamw_eps"],
                weight_decay=group["weight_decay"],
            )


def _muon_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Hidden matrices get Muon; embeddings and readout the AdamW rule; vectors AdamW without decay."""
    groups = [
        {"params": [p for _, p in partition.hidden], "param_names": [n for n, _ in partition.hidden],
         "matrix": True},
        {"params": [p for _, p in partition.embedding + partition.readout],
         "param_names": [n for n, _ in partition.embedding + partition.readout],
         "matrix": False, "lr": args["adamw_lr"], "weight_decay": args["adamw_weight_decay"]},
        {"params": [p for _, p in partition.vector], "param_names": [n for n, _ in partition.vector],
         "matrix": False, "lr": args["adamw_lr"], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


register(
    OptimizerSpec(
        name="muon",
        cls=Muon,
        family="matrix",
        defaults=dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, scale="original"),
        builder_defaults=dict(adamw_lr=3e-3, adamw_weight_decay=0.0),
        search_space=dict(
            lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-3, 0.3),
            adamw_lr=FloatRange(3e-4, 3e-2),
        ),
        state_bytes=4.0,
        paper=Paper("Muon: An optimizer for hidden layers in neural networks (Jordan et al., blog)", None, 2024),
        description="Newton-Schulz-orthogonalised momentum on hidden matrices; AdamW on the rest",
        build_groups=_muon_groups,
    )
)
