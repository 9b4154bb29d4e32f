"""Muon: momentum orthogonalised by Newton–Schulz, for the hidden matrices of a network.

Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein, "Muon: An optimizer for hidden
layers in neural networks" (2024, kellerjordan.github.io/posts/muon); the
``match_rms_adamw`` scale is from Liu et al., "Muon is Scalable for LLM Training"
(arXiv:2502.16982).

For a group with ``matrix=True`` (the default), per parameter ``W`` with gradient ``G``::

    M <- beta M + (1 - beta) G                       # EMA momentum (Keller's form)
    U <- (1 - beta) G + beta M   if nesterov else M
    O <- NewtonSchulz5(U reshaped to (rows, -1))     # batched over equal shapes
    W <- W (1 - lr wd) - lr s O                      # decay with the raw lr

with ``s`` from ``scale``: ``"original"`` sqrt(max(1, rows/cols)); ``"match_rms_adamw"``
0.2 sqrt(max(rows, cols)); ``"spectral"`` sqrt(rows/cols) (the muP spectral condition of
Yang, Simon & Bernstein, arXiv:2310.17813; see ``muon_spectral``); ``"none"`` 1. Groups
with ``matrix=False`` get AdamW (:class:`~optarena.optim.matrix_family.MatrixOptimizer`).

Deviations from the reference code: ``p.grad`` is never modified in place (the
reference's Nesterov blend overwrites it), and Newton–Schulz runs in bf16 only where bf16
matmuls are fast (accelerators, CPUs with AMX / AVX512-BF16), in float32 on other CPUs and
in float64 for float64 parameters, unless ``ns_dtype`` says otherwise
(:func:`~optarena.optim.orthogonalize.resolve_ns_dtype`). Each Newton–Schulz step
computes ``a X + B X`` as ``(B + a I) X`` (one plain GEMM), so the update matches
``torch.optim.Muon``'s up to rounding. ``torch.optim.Muon`` is documented with sum
momentum ``B = mu B + G`` but implements the same EMA as here; the two differ only by the
factor ``1 - mu``, which the normalisation removes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from optarena.optim.matrix_family import NewtonSchulzOptimizer, register_matrix_optimizer
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_choice

__all__ = ["MUON_SCALES", "Muon", "muon_scale"]

MUON_SCALES = ("original", "match_rms_adamw", "spectral", "none")


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


class Muon(NewtonSchulzOptimizer):
    """Muon for ``matrix=True`` groups, AdamW for ``matrix=False`` groups (see module docstring).

    Args:
        params: tensors or param-group dicts; matrix groups may hold only tensors with
            ndim >= 2 (conv weights are flattened to ``(out, -1)`` for the iteration).
        lr: learning rate (default 0.02, Keller's value for ``scale="original"``).
        momentum: EMA coefficient beta in [0, 1) (default 0.95).
        nesterov: use the Nesterov blend (default True).
        weight_decay: decoupled weight decay, multiplied by the raw ``lr`` (default 0).
        scale: ``"original"``, ``"match_rms_adamw"``, ``"spectral"`` or ``"none"``.
        ns_steps, ns_coefficients, ns_dtype, ns_method, exact_orthogonalization: the orthogonalisation
            (:class:`~optarena.optim.matrix_family.NewtonSchulzOptimizer`).
        adamw_betas, adamw_eps, foreach: as :class:`~optarena.optim.matrix_family.MatrixOptimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        scale: str = "original",
        **kwargs: Any,
    ) -> None:
        check_choice(type(self).__name__, "scale", scale, MUON_SCALES)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, scale=scale)
        super().__init__(params, defaults, **kwargs)

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, updates = self._momentum_updates(group)
        if not params:
            return
        lr = group["lr"]
        for p, o in zip(params, self._orthogonalize(group, updates, cast_back=False)):
            self._decay_and_add(p, o.reshape(p.shape), lr, group["weight_decay"],
                                -lr * muon_scale(p.shape, group["scale"]))


register_matrix_optimizer(
    "muon", Muon,
    defaults=dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_method="newton_schulz",
                  weight_decay=0.0, scale="original"),
    search_space=dict(lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-3, 0.3)),
    paper=Paper("Muon: An optimizer for hidden layers in neural networks (Jordan et al., blog)", None, 2024),
    description="Newton-Schulz-orthogonalised momentum on hidden matrices; AdamW on the rest",
)
