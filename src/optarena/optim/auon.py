"""AuON and Hybrid-AuON: normalised momentum with a cosh-RMS "brake", in linear time.

"AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates" (arXiv:2509.24320);
reference code ryyzn9/AuON (``Auon_Adam_train.py`` at c87b862, ``auon/optimizer.py``).

AuON, the paper's version (the default), per hidden matrix ``W`` (rows x cols)::

    M <- beta M + (1 - beta) G
    U <- (1 - beta) G + beta M   if nesterov else M
    X <- U / (||U||_F + 1e-7)                       # unit Frobenius norm, O(mn)
    r <- sqrt(mean(cosh(gamma X)^2))                 # scalar "brake", gamma = 1 in the paper
    W <- W (1 - lr wd) - lr s X / (r + 1e-8)         # s = sqrt(max(1, rows/cols)) ("original")

``normalize=False`` with ``gamma=1.5`` and ``scale="none"`` reproduces the class of the
reference's ``auon`` package instead (it divides the *un-normalised* ``U`` by ``r``, computed on ``gamma X``).

Hybrid-AuON (the paper's version) replaces the normalisation by ``ns_steps`` Newton–Schulz
iterations (one in the paper; the reference's package class defaults to five) and then applies the
same brake, with ``r`` computed on ``gamma O`` for the Newton–Schulz output ``O``::

    O <- NewtonSchulz_k(U);    r <- sqrt(mean(cosh(gamma O)^2));    W <- W - lr s O / (r + 1e-8)

Note: entries of a unit-norm matrix are ~1/sqrt(mn), so
``r ~ 1 + gamma^2 / (2 mn)`` is ~1 for any realistic layer. The brake is kept because it is
the paper's method, but AuON behaves as Frobenius-normalised momentum SGD, which is why
its learning rate (0.24 in the original script, 0.055 in the paper's LM run) is large.
Deviation: the original script normalises in bf16; we use the parameter's precision
(at least float32), because the update is tiny and bf16 rounding would dominate it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim.matrix_family import MatrixOptimizer, register_matrix_optimizer
from optarena.optim.muon import MUON_SCALES, muon_scale
from optarena.optim.orthogonalize import MUON_COEFFICIENTS
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_choice, check_positive

__all__ = ["AuON", "HybridAuON", "cosh_rms"]


def cosh_rms(X: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``sqrt(mean(cosh(gamma X)^2))`` over the last two dims (one scalar per matrix), in float32+."""
    work = X.to(torch.promote_types(X.dtype, torch.float32))
    return torch.cosh(gamma * work).square().mean(dim=(-2, -1), keepdim=True).sqrt()


class AuON(MatrixOptimizer):
    """AuON (paper version by default; see module docstring); AdamW on ``matrix=False`` groups.

    Args:
        lr: learning rate (default 0.24, the original script's ``auon_lr``).
        momentum: EMA coefficient beta in [0, 1) (default 0.95).
        nesterov: Nesterov blend (default True).
        gamma: scale inside the cosh (1 in the paper; 1.5 in the package class).
        normalize: divide ``U`` by its Frobenius norm before the brake (paper: True).
        weight_decay: decoupled, multiplied by the raw lr (default 0).
        scale: aspect-ratio multiplier, as Muon (``"original"`` in the paper).
        adamw_betas, adamw_eps, foreach: as :class:`~optarena.optim.matrix_family.MatrixOptimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.24,
        momentum: float = 0.95,
        nesterov: bool = True,
        gamma: float = 1.0,
        normalize: bool = True,
        weight_decay: float = 0.0,
        scale: str = "original",
        **kwargs: Any,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, gamma=gamma, normalize=normalize,
                        weight_decay=weight_decay, scale=scale)
        self._init(params, defaults, kwargs)

    def _init(self, params: Any, defaults: dict[str, Any], kwargs: dict[str, Any]) -> None:
        check_positive(type(self).__name__, "gamma", defaults["gamma"])
        check_choice(type(self).__name__, "scale", defaults["scale"], MUON_SCALES)
        MatrixOptimizer.__init__(self, params, defaults, **kwargs)

    def _direction(
        self, group: dict[str, Any], updates: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs (direction ``D``, brake input): the matrix ``D`` whose brake-scaled version is applied: ``U / ||U||_F`` (paper) or ``U``."""
        out = []
        for u in updates:
            work = u.reshape(u.shape[0], -1).to(torch.promote_types(u.dtype, torch.float32))
            normalized = work / (work.norm() + 1e-7)
            out.append((normalized if group["normalize"] else work, normalized))
        return out

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, updates = self._momentum_updates(group)
        if not params:
            return
        lr = group["lr"]
        for p, (direction, brake_input) in zip(params, self._direction(group, updates)):
            r = cosh_rms(brake_input, group["gamma"])
            step = (direction / (r + 1e-8)).view_as(p).to(p.dtype)
            self._decay_and_add(p, step, lr, group["weight_decay"], -lr * muon_scale(p.shape, group["scale"]))


class HybridAuON(AuON):
    """Hybrid-AuON: ``ns_steps`` Newton–Schulz iterations (1 in the paper), then the cosh-RMS brake."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        gamma: float = 1.0,
        ns_steps: int = 1,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        weight_decay: float = 0.0,
        scale: str = "original",
        **kwargs: Any,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, gamma=gamma, normalize=True,
                        weight_decay=weight_decay, scale=scale, ns_steps=ns_steps,
                        ns_coefficients=ns_coefficients, ns_dtype=ns_dtype)
        self._init(params, defaults, kwargs)

    def _direction(
        self, group: dict[str, Any], updates: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(o, o) for o in self._orthogonalize(group, updates)]


PAPER = Paper("AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates", "2509.24320", 2025)

register_matrix_optimizer(
    "auon", AuON,
    defaults=dict(lr=0.24, momentum=0.95, nesterov=True, gamma=1.0, normalize=True, weight_decay=0.0,
                  scale="original"),
    search_space=dict(lr=FloatRange(1e-2, 1.0), weight_decay=FloatRange(1e-4, 0.1)),
    paper=PAPER,
    description="Frobenius-normalised momentum with a cosh-RMS brake on hidden matrices (linear time); "
                "AdamW on the rest",
)
register_matrix_optimizer(
    "hybrid_auon", HybridAuON,
    defaults=dict(lr=0.02, momentum=0.95, nesterov=True, gamma=1.0, ns_steps=1, weight_decay=0.0, scale="original"),
    search_space=dict(lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-4, 0.1)),
    paper=PAPER,
    description="one Newton-Schulz step then the AuON cosh-RMS brake on hidden matrices; AdamW on the rest",
)
