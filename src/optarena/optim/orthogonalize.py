"""Orthogonalisation of update matrices: Newton–Schulz (batched) and the exact polar factor.

``newton_schulz`` is the quintic iteration of Jordan et al. (Muon, 2024): after scaling
``X`` to unit Frobenius norm, repeat ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``.
The default coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero, so the
singular values land roughly in [0.5, 1.5] rather than exactly at 1 (ALGORITHMS.md §0).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

__all__ = ["MUON_COEFFICIENTS", "newton_schulz", "orthogonalize_many", "polar_factor", "resolve_ns_dtype"]

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def resolve_ns_dtype(tensor: torch.Tensor, ns_dtype: torch.dtype | None) -> torch.dtype:
    """``None`` means bfloat16 on accelerators and at least float32 on CPU, where bf16 matmuls are slow."""
    if ns_dtype is not None:
        return ns_dtype
    if tensor.device.type != "cpu":
        return torch.bfloat16
    return torch.promote_types(tensor.dtype, torch.float32)


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximate the orthogonal polar factor of ``G`` (shape ``(..., m, n)``), batched over leading dims.

    Iterates on the smaller Gram matrix (transposes tall inputs). Returns a tensor of the
    compute ``dtype`` (see :func:`resolve_ns_dtype`); callers cast back.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    a, b, c = coefficients
    X = G.to(resolve_ns_dtype(G, dtype))
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.ndim == 3 else torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a) if X.ndim == 3 else torch.addmm(X, B, X, beta=a)
    return X.mT if transposed else X


def polar_factor(G: torch.Tensor) -> torch.Tensor:
    """The exact orthogonal polar factor ``U V^T`` of ``G = U S V^T`` (float32 or wider); test reference."""
    work = G.to(torch.promote_types(G.dtype, torch.float32))
    U, _, Vh = torch.linalg.svd(work, full_matrices=False)
    return U @ Vh


def orthogonalize_many(
    matrices: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    exact: bool = False,
) -> list[torch.Tensor]:
    """Orthogonalise 2-D matrices, one batched Newton–Schulz chain per (shape, device, dtype).

    Returns outputs in input order, cast back to each input's dtype.
    """
    out: list[torch.Tensor | None] = [None] * len(matrices)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, M in enumerate(matrices):
        if M.ndim != 2:
            raise ValueError(f"orthogonalize_many expects 2-D matrices, got shape {tuple(M.shape)} at index {i}")
        buckets[(tuple(M.shape), M.device, M.dtype)].append(i)
    for (_, _, in_dtype), idx in buckets.items():
        if exact:
            results = [polar_factor(matrices[i]) for i in idx]
        elif len(idx) == 1:
            results = [newton_schulz(matrices[idx[0]], steps, coefficients, eps, dtype)]
        else:
            stacked = torch.stack([matrices[i] for i in idx])
            results = list(newton_schulz(stacked, steps, coefficients, eps, dtype).unbind(0))
        for i, r in zip(idx, results):
            out[i] = r.to(in_dtype)
    return out  # type: ignore[return-value]
