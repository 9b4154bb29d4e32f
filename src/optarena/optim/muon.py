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
0.2 sqrt(max(rows, cols)); ``"spectral"`` sqrt(rows/cols) (the muP spectral condition of
Yang, Simon & Bernstein, arXiv:2310.17813; see ``muon_spectral``); ``"none"`` 1. Groups with ``matrix=False`` (embeddings,
readout, biases, norm gains) get the AdamW rule with ``adamw_betas`` / ``adamw_eps`` and
the group's own ``lr`` and ``weight_decay``, so one object serves a whole model.

This module also holds what the whole Muon family shares: :class:`MatrixOptimizer`
(the ``matrix=True/False`` split, the AdamW rule, extra state such as a random
generator in ``state_dict``) and :func:`matrix_param_groups` (the partition-based
grouping used by ``create_optimizer``).

Deviations from the reference code: ``p.grad`` is never modified in place (the
reference's Nesterov blend overwrites it), and Newton–Schulz runs in bf16 only where bf16
matmuls are fast (accelerators, CPUs with AMX / AVX512-BF16), in float32 on other CPUs and
in float64 for float64 parameters, unless ``ns_dtype`` says otherwise
(:func:`~optarena.optim.orthogonalize.resolve_ns_dtype`). Each Newton–Schulz step
computes ``a X + B X`` as ``(B + a I) X`` (one plain GEMM, ~10% faster on CPU), so the
update matches ``torch.optim.Muon``'s to rounding: within 1e-6 in float32, 1e-13 in
float64 and a few percent of the step in bf16, where every product rounds to 8 bits
(tests/test_muon.py). ``torch.optim.Muon`` is
documented with sum momentum ``B = mu B + G`` but implements the same EMA as here; the
two differ only by the factor ``1 - mu``, which the normalisation removes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import torch

from optarena.optim._foreach import adamw_rule, collect_grads, run_closure, zeros_state
from optarena.optim.orthogonalize import MUON_COEFFICIENTS, ORTHOGONALIZATION_METHODS, orthogonalize_many
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register

__all__ = ["MUON_SCALES", "MatrixOptimizer", "Muon", "matrix_param_groups", "muon_scale"]

MUON_SCALES = ("original", "match_rms_adamw", "spectral", "none")
NS_METHODS = tuple(m for m in ORTHOGONALIZATION_METHODS if m != "svd")


def muon_scale(shape: torch.Size | tuple[int, ...], scale: str) -> float:
    """Learning-rate multiplier for an orthogonalised update of a (rows, cols...) weight."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    if scale == "original":
        return math.sqrt(max(1.0, rows / cols))
    if scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if scale == "spectral":
        return math.sqrt(rows / cols)
    if scale == "none":
        return 1.0
    raise ValueError(f"scale must be one of {MUON_SCALES}, got {scale!r}")


# ---- validation helpers shared by the matrix family (messages name the value and the valid range) ----

def check_nonnegative(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0 or math.isinf(value):
        raise ValueError(f"{owner} {name} must be a finite float >= 0, got {name}={value!r}")


def check_positive(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0.0 or math.isinf(value):
        raise ValueError(f"{owner} {name} must be a finite float > 0, got {name}={value!r}")


def check_unit_interval(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner} {name} must be in [0, 1), got {name}={value!r}")


def check_int(owner: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{owner} {name} must be an int {bound}, got {name}={value!r}")


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{owner} {name} must be one of {tuple(choices)}, got {name}={value!r}")


def check_betas(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in value
    ):
        raise ValueError(f"{owner} {name} must be a pair in [0, 1), got {name}={value!r}")


def check_ns(owner: str, ns_steps: Any, ns_coefficients: Any, ns_method: Any) -> None:
    check_int(owner, "ns_steps", ns_steps, 0, 100)
    triples = ns_coefficients if ns_coefficients and isinstance(ns_coefficients[0], (tuple, list)) else [ns_coefficients]
    if not all(isinstance(t, (tuple, list)) and len(t) == 3 and all(isinstance(c, (int, float)) for c in t)
               for t in triples):
        raise ValueError(
            f"{owner} ns_coefficients must be three floats (a, b, c) or a sequence of such triples, "
            f"got ns_coefficients={ns_coefficients!r}"
        )
    check_choice(owner, "ns_method", ns_method, NS_METHODS)


class MatrixOptimizer(torch.optim.Optimizer):
    """Base of the Muon family: ``matrix=True`` groups get the subclass's rule, the rest AdamW.

    Subclasses implement ``_matrix_group(group)`` (and may set ``vector_ok`` when their
    matrix rule also accepts 1-D tensors). ``_extra_state`` / ``_load_extra_state`` let a
    subclass keep state that belongs to no parameter (a random generator, a global step);
    it travels in ``state_dict()["extra"]`` so a restored optimizer continues exactly.
    """

    owner = "MatrixOptimizer"  # the name used in error messages
    vector_ok = False

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        adamw_betas: tuple[float, float],
        adamw_eps: float,
        foreach: bool = True,
    ) -> None:
        check_nonnegative(self.owner, "lr", defaults.get("lr"))
        if "weight_decay" in defaults:
            check_nonnegative(self.owner, "weight_decay", defaults["weight_decay"])
        check_betas(self.owner, "adamw_betas", adamw_betas)
        check_nonnegative(self.owner, "adamw_eps", adamw_eps)
        defaults = {**defaults, "adamw_betas": tuple(adamw_betas), "adamw_eps": adamw_eps, "foreach": bool(foreach),
                    "matrix": True}
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_nonnegative(self.owner, "lr", group["lr"])
            if group["matrix"] and not self.vector_ok:
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(
                            f"{self.owner} matrix groups take tensors with ndim >= 2, got shape {tuple(p.shape)}; "
                            "put biases, gains and embeddings in a group with matrix=False "
                            f"(optarena.optim.create_optimizer('{self.owner.lower()}', model) does this for you)"
                        )

    # ---- the step ----
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        self._before_step()
        for group in self.param_groups:
            if group["matrix"]:
                self._matrix_group(group)
            else:
                self._adamw_group(group)
        self._after_step(loss)
        return loss

    def _before_step(self) -> None:
        """Hook run at the start of :meth:`step` (Drop-Muon draws its layers here when nobody else did)."""

    def _after_step(self, loss: Any) -> None:
        """Hook run at the end of :meth:`step` with the closure's loss (or None)."""

    def _matrix_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adamw_group(
        self, group: dict[str, Any], params: list[torch.Tensor] | None = None,
        grads: list[torch.Tensor] | None = None,
    ) -> None:
        """AdamW (arXiv:1711.05101) on ``params`` (default: the group's params that have a gradient).

        ``grads`` replaces the parameters' gradients (MKOR feeds its preconditioned gradients).
        """
        if params is None:
            params, grads = collect_grads(self.owner, group["params"])
        elif grads is None:
            grads = [p.grad for p in params]
        buckets: dict[Any, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            state = self.state[p]
            if "exp_avg" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            key = (p.device, p.dtype, int(state["step"]))
            buckets[key if group["foreach"] else (key, i)].append(i)
        for key, idx in buckets.items():
            adamw_rule(
                [params[i] for i in idx], [grads[i] for i in idx],
                [self.state[params[i]]["exp_avg"] for i in idx],
                [self.state[params[i]]["exp_avg_sq"] for i in idx],
                step=int(self.state[params[idx[0]]]["step"]), lr=group["lr"], betas=group["adamw_betas"],
                eps=group["adamw_eps"], weight_decay=group["weight_decay"],
            )

    # ---- state that belongs to no parameter ----
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = self._extra_state()
        if extra:
            state["extra"] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("extra", None)
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; statistics we keep in float32 for
        # bf16 parameters (factors, norms) must come back in their saved precision to continue exactly
        by_index = {
            index: p
            for saved, group in zip(state_dict["param_groups"], self.param_groups)
            for index, p in zip(saved["params"], group["params"])
        }
        for index, saved_state in state_dict["state"].items():
            p = by_index.get(index)
            if p is None:
                continue
            for key, value in saved_state.items():
                current = self.state[p].get(key)
                if torch.is_tensor(value) and torch.is_tensor(current) and current.dtype != value.dtype:
                    self.state[p][key] = value.to(device=p.device)
        if extra is not None:
            self._load_extra_state(extra)

    # ---- shared pieces of the matrix rules ----
    def _momentum_buffers(self, params: list[torch.Tensor], key: str = "momentum_buffer") -> list[torch.Tensor]:
        return zeros_state(self, params, key)[0]

    @staticmethod
    def _ema_and_nesterov(
        bufs: list[torch.Tensor], grads: list[torch.Tensor], beta: float, nesterov: bool, foreach: bool
    ) -> list[torch.Tensor]:
        """``M <- beta M + (1 - beta) G``; returns ``(1 - beta) G + beta M`` (Nesterov) or ``M``."""
        if foreach:
            torch._foreach_lerp_(bufs, grads, 1 - beta)
            return torch._foreach_lerp(grads, bufs, beta) if nesterov else bufs
        for m, g in zip(bufs, grads):
            m.lerp_(g, 1 - beta)
        return [torch.lerp(g, m, beta) for g, m in zip(grads, bufs)] if nesterov else bufs


class Muon(MatrixOptimizer):
    """Muon for ``matrix=True`` groups, AdamW for ``matrix=False`` groups (see module docstring).

    Args:
        params: tensors or param-group dicts; matrix groups may hold only tensors with
            ndim >= 2 (conv weights are flattened to ``(out, -1)`` for the iteration).
        lr: learning rate (default 0.02, Keller's value for ``scale="original"``).
        momentum: EMA coefficient beta in [0, 1) (default 0.95).
        nesterov: use the Nesterov blend (default True).
        ns_steps: Newton–Schulz iterations (default 5).
        ns_coefficients: quintic coefficients (a, b, c), or one triple per step.
        ns_dtype: compute dtype of Newton–Schulz; ``None``: bf16 where bf16 matmuls are native
            (accelerators, AMX / AVX512-BF16 CPUs), else fp32; fp64 for fp64 parameters.
        ns_method: ``"newton_schulz"`` (default), ``"gram"`` (same polynomial iterated on
            the small Gram matrix, fewer FLOPs for rectangular weights, fp32+) or ``"auto"``
            (the cheaper of the two per shape); see :mod:`optarena.optim.orthogonalize`.
        exact_orthogonalization: use the SVD polar factor instead of Newton–Schulz (slow; a reference).
        weight_decay: decoupled weight decay, multiplied by the raw ``lr`` (default 0).
        scale: ``"original"``, ``"match_rms_adamw"``, ``"spectral"`` or ``"none"``.
        adamw_betas, adamw_eps: AdamW rule for ``matrix=False`` groups.
        foreach: batch the element-wise ops and Newton–Schulz over equal shapes (default
            True); ``False`` runs one tensor at a time (same result up to rounding).
    """

    owner = "Muon"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        ns_method: str = "newton_schulz",
        exact_orthogonalization: bool = False,
        weight_decay: float = 0.0,
        scale: str = "original",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        foreach: bool = True,
    ) -> None:
        check_unit_interval(self.owner, "momentum", momentum)
        check_ns(self.owner, ns_steps, ns_coefficients, ns_method)
        check_choice(self.owner, "scale", scale, MUON_SCALES)
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype, ns_method=ns_method,
            exact_orthogonalization=exact_orthogonalization, weight_decay=weight_decay, scale=scale,
        )
        super().__init__(params, defaults, adamw_betas=adamw_betas, adamw_eps=adamw_eps, foreach=foreach)

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads(self.owner, group["params"])
        if not params:
            return
        bufs = self._momentum_buffers(params)
        updates = self._ema_and_nesterov(bufs, grads, group["momentum"], group["nesterov"], group["foreach"])
        ortho = orthogonalize_many(
            [u.reshape(u.shape[0], -1) for u in updates],
            steps=group["ns_steps"], coefficients=group["ns_coefficients"], dtype=group["ns_dtype"],
            exact=group["exact_orthogonalization"], method=group["ns_method"], batched=group["foreach"],
            cast_back=False,
        )
        lr, wd = group["lr"], group["weight_decay"]
        for p, o in zip(params, ortho):  # decay and update back to back: the second pass finds p in cache
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(o.reshape(p.shape), alpha=-lr * muon_scale(p.shape, group["scale"]))


def matrix_param_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Hidden matrices get the matrix rule; embeddings and readout the AdamW rule; vectors AdamW without decay.

    ``args`` carries ``adamw_lr`` and ``adamw_weight_decay`` (the builder defaults of the family).
    """
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


_muon_groups = matrix_param_groups  # the name the foundation used

register(
    OptimizerSpec(
        name="muon",
        cls=Muon,
        family="matrix",
        defaults=dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_method="newton_schulz",
                      weight_decay=0.0, scale="original"),
        builder_defaults=dict(adamw_lr=3e-3, adamw_weight_decay=0.0),
        search_space=dict(
            lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-3, 0.3),
            adamw_lr=FloatRange(3e-4, 3e-2),
        ),
        state_bytes=4.0,
        paper=Paper("Muon: An optimizer for hidden layers in neural networks (Jordan et al., blog)", None, 2024),
        description="Newton-Schulz-orthogonalised momentum on hidden matrices; AdamW on the rest",
        build_groups=matrix_param_groups,
    )
)
