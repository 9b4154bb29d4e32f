"""FISMO: Fisher-structured (Kronecker-factored) whitening around Muon's orthogonalised momentum.

Xu, Yan, Zhang, "FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer"
(arXiv:2601.21750).

RECONSTRUCTED: no code and no hyperparameters of the paper were available. Algorithm 1
below is taken from two consistent secondary write-ups of the paper; the defaults (``beta=0.95``, ``gamma=0.95``, ``damping=1e-3``), the refresh interval, the
aspect scale and the weight decay are our choices. Per hidden matrix ``W`` (m x n) with
gradient ``G``, Kronecker factors ``P`` (m x m) and ``Q`` (n x n), both starting at ``I``::

    L  = (1/n) G Q^-1 G^T + damping (tr P / m) I
    P  <- sym(m P~ / tr P~)   with  P~ = gamma P + (1 - gamma) L       # trace-normalised, SPD
    R  = (1/m) G^T P^-1 G + damping (tr Q / n) I                      # the NEW P (Gauss–Seidel)
    Q  <- sym(n Q~ / tr Q~)   with  Q~ = gamma Q + (1 - gamma) R
    G~ = P^-1/2 G Q^-1/2                                              # whiten
    M  <- beta M + (1 - beta) G~                                      # momentum in the whitened space
    W  <- W (1 - lr wd) - lr s P^-1/2 Polar(M) Q^-1/2                 # Polar by Newton–Schulz

``sym(A) = (A + A^T) / 2`` and ``s`` is Muon's aspect scale (``scale``, default
``"original"``, so FISMO and Muon share a learning-rate scale; ``"match_rms_adamw"`` is
available as an option).

Our engineering choices (not from the paper): ``P``, ``Q`` and their inverse roots are
refreshed every ``precondition_frequency`` steps (1 = the algorithm above, every step);
in between the cached ``P^-1/2`` and ``Q^-1/2`` whiten the new gradients. The roots come
from float32 (float64 for float64 parameters) eigendecompositions with eigenvalues
floored at ``1e-12 * max``, and ``Q^-1`` is the square of the cached ``Q^-1/2``. A side
longer than ``max_precondition_dim`` keeps the identity (its factor would cost more
memory than the matrix). Note that the EMA in ``P~`` mixes ``P`` (trace ``m``) with ``L``,
whose size follows the gradient's scale, so the effective averaging weight depends on
the gradient norm — as the reconstructed algorithm is written.

State per m x n matrix: ``M`` (m n), ``P`` and ``P^-1/2`` (2 m^2), ``Q`` and ``Q^-1/2``
(2 n^2): about 5x the parameter for a square matrix.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim._foreach import collect_grads
from optarena.optim.matrix_family import NewtonSchulzOptimizer, register_matrix_optimizer
from optarena.optim.muon import MUON_SCALES, muon_scale
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_choice, check_int, check_nonnegative, check_unit_interval

__all__ = ["FISMO"]


def _sym(A: torch.Tensor) -> torch.Tensor:
    return 0.5 * (A + A.mT)


def _inverse_roots(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A^-1, A^-1/2)`` of a symmetric positive (semi)definite matrix, eigenvalues floored."""
    eigenvalues, vectors = torch.linalg.eigh(A)
    eigenvalues = eigenvalues.clamp(min=1e-12 * float(eigenvalues.abs().max().clamp(min=1e-30)))
    inv_sqrt = eigenvalues.rsqrt()
    return (vectors * inv_sqrt.square()) @ vectors.mT, (vectors * inv_sqrt) @ vectors.mT


class FISMO(NewtonSchulzOptimizer):
    """FISMO (reconstructed; see module docstring); AdamW on ``matrix=False`` groups.

    Args:
        lr: learning rate (default 0.02, with ``scale="original"`` as Muon).
        momentum: beta of the whitened momentum (default 0.95).
        factor_decay: gamma of the Kronecker-factor EMA (default 0.95).
        damping: mu, relative to the factors' mean eigenvalue (default 1e-3).
        precondition_frequency: refresh ``P``, ``Q`` and their roots every k steps (default 10).
        max_precondition_dim: sides longer than this keep an identity factor (default 4096).
        weight_decay: decoupled, times the raw lr (default 0).
        scale: Muon's aspect scale (default ``"original"``).
        ns_steps, ns_coefficients, ns_dtype, ns_method, exact_orthogonalization: ``Polar(M)``
            (:class:`~optarena.optim.matrix_family.NewtonSchulzOptimizer`).
        adamw_betas, adamw_eps, foreach: as :class:`~optarena.optim.matrix_family.MatrixOptimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        factor_decay: float = 0.95,
        damping: float = 1e-3,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 4096,
        weight_decay: float = 0.0,
        scale: str = "original",
        **kwargs: Any,
    ) -> None:
        check_unit_interval("FISMO", "factor_decay", factor_decay)
        check_nonnegative("FISMO", "damping", damping)
        check_int("FISMO", "precondition_frequency", precondition_frequency, 1)
        check_int("FISMO", "max_precondition_dim", max_precondition_dim, 1)
        check_choice("FISMO", "scale", scale, MUON_SCALES)
        defaults = dict(
            lr=lr, momentum=momentum, factor_decay=factor_decay, damping=damping,
            precondition_frequency=precondition_frequency, max_precondition_dim=max_precondition_dim,
            weight_decay=weight_decay, scale=scale,
        )
        super().__init__(params, defaults, **kwargs)

    def _init_state(self, state: dict[str, Any], G: torch.Tensor, group: dict[str, Any]) -> None:
        m, n = G.shape
        work = torch.promote_types(G.dtype, torch.float32)
        state["step"] = torch.tensor(0.0)
        state["momentum_buffer"] = torch.zeros_like(G, dtype=work)
        for side, dim in (("P", m), ("Q", n)):
            if dim <= group["max_precondition_dim"]:
                eye = torch.eye(dim, dtype=work, device=G.device)
                state[side] = eye
                state[f"{side}_inv_sqrt"] = eye.clone()

    def _refresh_factors(self, state: dict[str, Any], G: torch.Tensor, group: dict[str, Any]) -> None:
        """One Gauss–Seidel sweep of the factor EMA: P with the old Q, then Q with the new P.

        A non-finite gradient leaves the factors as they are (``eigh`` cannot take it); it
        reaches the parameter through the momentum, as in Muon.
        """
        if not bool(torch.isfinite(G).all()):
            return
        m, n = G.shape
        gamma, mu = group["factor_decay"], group["damping"]
        P_inv = None
        if "P" in state:
            Q_inv = state["Q_inv_sqrt"] @ state["Q_inv_sqrt"] if "Q" in state else None
            GQ = G @ Q_inv if Q_inv is not None else G
            P = state["P"]
            L = (GQ @ G.mT) / n
            L.diagonal().add_(mu * float(P.diagonal().sum()) / m)
            P_tilde = gamma * P + (1 - gamma) * L
            state["P"] = P = _sym(P_tilde * (m / P_tilde.diagonal().sum()))
            P_inv, state["P_inv_sqrt"] = _inverse_roots(P)
        if "Q" in state:
            Q = state["Q"]
            R = (G.mT @ (P_inv @ G if P_inv is not None else G)) / m
            R.diagonal().add_(mu * float(Q.diagonal().sum()) / n)
            Q_tilde = gamma * Q + (1 - gamma) * R
            state["Q"] = Q = _sym(Q_tilde * (n / Q_tilde.diagonal().sum()))
            state["Q_inv_sqrt"] = _inverse_roots(Q)[1]

    @staticmethod
    def _two_sided(state: dict[str, Any], X: torch.Tensor) -> torch.Tensor:
        """``P^-1/2 X Q^-1/2`` (identity on sides without a factor)."""
        if "P_inv_sqrt" in state:
            X = state["P_inv_sqrt"] @ X
        if "Q_inv_sqrt" in state:
            X = X @ state["Q_inv_sqrt"]
        return X

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads("FISMO", group["params"])
        if not params:
            return
        beta = group["momentum"]
        bufs = []
        for p, g in zip(params, grads):
            state = self.state[p]
            G = g.reshape(g.shape[0], -1).to(torch.promote_types(g.dtype, torch.float32))
            if "step" not in state:
                self._init_state(state, G, group)
            if int(state["step"]) % group["precondition_frequency"] == 0:
                self._refresh_factors(state, G, group)
            state["step"] += 1
            state["momentum_buffer"].lerp_(self._two_sided(state, G), 1 - beta)
            bufs.append(state["momentum_buffer"])
        lr = group["lr"]
        for p, o in zip(params, self._orthogonalize(group, bufs)):
            update = self._two_sided(self.state[p], o).view_as(p).to(p.dtype)
            self._decay_and_add(p, update, lr, group["weight_decay"], -lr * muon_scale(p.shape, group["scale"]))


register_matrix_optimizer(
    "fismo", FISMO,
    family="second-order",
    defaults=dict(lr=0.02, momentum=0.95, factor_decay=0.95, damping=1e-3, precondition_frequency=10,
                  weight_decay=0.0, scale="original"),
    search_space=dict(lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-3, 0.3)),
    state_bytes=20.0,  # M + P + Q + two inverse roots: ~5 float32 buffers per parameter of a square matrix
    paper=Paper("FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer (reconstructed)", "2601.21750", 2026),
    description="Kronecker-factored Fisher whitening around Muon's orthogonalised momentum "
                "(reconstructed from secondary write-ups); AdamW on the rest",
)
