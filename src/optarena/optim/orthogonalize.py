"""Orthogonalisation of update matrices: Newton–Schulz (batched), its Gram-space variant, the exact polar factor.

``newton_schulz`` is the quintic iteration of Jordan et al. (Muon, 2024): after scaling
``X`` to unit Frobenius norm, repeat ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``.
The default coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero, so the
singular values land roughly in [0.7, 1.2] rather than exactly at 1;
:func:`singular_value_band` computes the band a coefficient schedule promises.

Every step is an odd polynomial applied to the singular values: with ``X = U S V^T``,
``X_k = U p_k(S) V^T``. Hence ``X_k = Q_k X_0`` where ``Q_k`` is a polynomial in the
small Gram matrix ``A_0 = X_0 X_0^T`` (``m x m`` for a wide ``m x n`` input), and the
whole iteration can run on ``m x m`` matrices, touching the ``m x n`` matrix only twice
(:func:`gram_newton_schulz`). For the 4:1 MLP matrices of a transformer this is the same
polynomial (so the same orthogonality error, up to rounding) for 1.8x fewer FLOPs at 5
steps; it is what ``method="auto"`` picks whenever its FLOP count is lower. The idea of
iterating on the Gram matrix is also used by pytorch-optimizer's ``gram_newton_schulz``
and Dao AI Lab's "Gram Newton-Schulz" note; this implementation is written from the
algebra above. It is run in float32 or wider, because the Gram matrix squares the
condition number and bf16 rounding then accumulates over the steps.

``coefficients`` may be one triple (used at every step) or a sequence of triples, one
per step (the last repeats), as in per-step schedules such as Polar Express (Amsel et
al., arXiv:2505.16932).
"""

from __future__ import annotations

import math
import functools
from collections import defaultdict
from typing import Sequence, Union

import torch

__all__ = [
    "MUON_COEFFICIENTS",
    "ORTHOGONALIZATION_METHODS",
    "gram_newton_schulz",
    "gram_newton_schulz_flops",
    "cpu_has_fast_bf16",
    "newton_schulz",
    "newton_schulz_flops",
    "orthogonality_error",
    "orthogonalize_many",
    "polar_factor",
    "resolve_ns_dtype",
    "singular_value_band",
]

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ORTHOGONALIZATION_METHODS = ("newton_schulz", "gram", "auto", "svd")

Coefficients = Union[tuple[float, float, float], Sequence[tuple[float, float, float]]]


def _coefficient_schedule(coefficients: Coefficients, steps: int) -> list[tuple[float, float, float]]:
    """Normalise ``coefficients`` (a triple, or one triple per step) to a list of ``steps`` triples."""
    coefficients = tuple(coefficients)
    if len(coefficients) == 3 and all(isinstance(c, (int, float)) for c in coefficients):
        return [tuple(float(c) for c in coefficients)] * steps  # type: ignore[list-item]
    schedule = [tuple(float(c) for c in triple) for triple in coefficients]
    if not schedule or any(len(t) != 3 for t in schedule):
        raise ValueError(f"coefficients must be (a, b, c) or a sequence of such triples, got {coefficients!r}")
    return [schedule[min(i, len(schedule) - 1)] for i in range(steps)]  # type: ignore[misc]


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: be conservative
        return False


def resolve_ns_dtype(tensor: torch.Tensor, ns_dtype: torch.dtype | None) -> torch.dtype:
    """The compute dtype of Newton–Schulz; ``None`` picks one per device.

    bfloat16 on accelerators (as Keller Jordan's Muon and ``torch.optim.Muon``) and on CPUs
    with native bf16 matmuls (AMX, AVX512-BF16, where bf16 GEMMs are much cheaper than fp32);
    float32 on other CPUs, where bf16 matmuls are emulated and slow. float64 tensors keep
    float64 (references and tests).
    """
    if ns_dtype is not None:
        return ns_dtype
    if tensor.dtype == torch.float64:
        return torch.float64
    if tensor.device.type != "cpu" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _prepare(G: torch.Tensor, steps: int, dtype: torch.dtype, eps: float) -> tuple[torch.Tensor, bool]:
    """Cast, make wide (rows <= cols) and scale to unit Frobenius norm (so the spectral norm is <= 1)."""
    if G.ndim < 2:
        raise ValueError(f"orthogonalisation needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    # clamp (not "+ eps") keeps non-zero norms exact; the same arithmetic as torch.optim.Muon.
    # The result is contiguous (a tall input's transpose is materialised) so that the
    # iteration's GEMMs can write into preallocated buffers of the same layout.
    return (X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)).contiguous(), transposed


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: Coefficients = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximate the orthogonal polar factor of ``G`` (shape ``(..., m, n)``), batched over leading dims.

    Iterates on the smaller Gram matrix side (transposes tall inputs). Returns a tensor of
    the compute ``dtype`` (see :func:`resolve_ns_dtype`); callers cast back.
    """
    X, transposed = _prepare(G, steps, resolve_ns_dtype(G, dtype), eps)
    batched = X.ndim == 3
    if X.ndim > 3:
        raise ValueError(f"newton_schulz takes (m, n) or (batch, m, n), got shape {tuple(G.shape)}")
    # a X + B X is computed as (B + a I) X: the a I goes onto the small m x m matrix, and the
    # large product is a plain GEMM instead of one that first copies X into its output
    # (rounds differently from torch.optim.Muon's addmm form, by ~1 ulp of the compute dtype).
    # The products write into three buffers allocated once: fresh multi-MB tensors at every
    # step cost page faults on CPU.
    A = X.new_empty((*X.shape[:-1], X.size(-2)))
    B, Y = torch.empty_like(A), torch.empty_like(X)
    addmm = torch.baddbmm if batched else torch.addmm
    for a, b, c in _coefficient_schedule(coefficients, steps):
        torch.matmul(X, X.mT, out=A)
        addmm(A, A, A, beta=b, alpha=c, out=B)
        B.diagonal(dim1=-2, dim2=-1).add_(a)
        torch.matmul(B, X, out=Y)
        X, Y = Y, X
    return X.mT if transposed else X


def gram_newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: Coefficients = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The same polynomial as :func:`newton_schulz`, iterated on the ``m x m`` Gram matrix (``m = min`` dim).

    With ``R_k = a I + b A_k + c A_k^2`` the iteration is ``Q_{k+1} = R_k Q_k`` and
    ``A_{k+1} = R_k A_k R_k`` (all polynomials in ``A_0`` commute); the output is ``Q X_0``.
    FLOPs: ``4 m^2 n + (8 steps - 6) m^3`` against ``steps (4 m^2 n + 2 m^3)``. Runs in
    at least float32 (``dtype`` is promoted), see the module docstring.
    """
    compute = torch.promote_types(resolve_ns_dtype(G, dtype), torch.float32)
    X, transposed = _prepare(G, steps, compute, eps)
    if X.ndim > 3:
        raise ValueError(f"gram_newton_schulz takes (m, n) or (batch, m, n), got shape {tuple(G.shape)}")
    if steps == 0:
        return X.mT if transposed else X
    A = X @ X.mT
    eye = torch.eye(A.size(-1), dtype=A.dtype, device=A.device)
    Q = None
    schedule = _coefficient_schedule(coefficients, steps)
    for k, (a, b, c) in enumerate(schedule):
        R = torch.baddbmm(A, A, A, beta=b, alpha=c) if A.ndim == 3 else torch.addmm(A, A, A, beta=b, alpha=c)
        R.add_(eye, alpha=a)
        Q = R if Q is None else R @ Q
        if k + 1 < len(schedule):
            A = R @ A @ R
            A = 0.5 * (A + A.mT)  # keep it exactly symmetric; rounding drifts otherwise
    out = Q @ X
    return out.mT if transposed else out


def newton_schulz_flops(m: int, n: int, steps: int = 5) -> int:
    """Matmul FLOPs (2 per multiply-add) of :func:`newton_schulz` on one ``m x n`` matrix."""
    m, n = min(m, n), max(m, n)
    return steps * (4 * m * m * n + 2 * m**3)


def gram_newton_schulz_flops(m: int, n: int, steps: int = 5) -> int:
    """Matmul FLOPs of :func:`gram_newton_schulz` on one ``m x n`` matrix."""
    m, n = min(m, n), max(m, n)
    if steps == 0:
        return 0
    return 4 * m * m * n + (8 * steps - 6) * m**3


def polar_factor(G: torch.Tensor) -> torch.Tensor:
    """The exact orthogonal polar factor ``U V^T`` of ``G = U S V^T`` (float32 or wider); test reference."""
    work = G.to(torch.promote_types(G.dtype, torch.float32))
    U, _, Vh = torch.linalg.svd(work, full_matrices=False)
    return U @ Vh


def orthogonality_error(O: torch.Tensor, G: torch.Tensor | None = None) -> float:
    """``max_i |sigma_i(O) - 1|``, or with ``G`` the RMS distance ``||O - U V^T||_F / sqrt(min(m, n))``."""
    O64 = O.to(torch.float64)
    if G is None:
        return float((torch.linalg.svdvals(O64) - 1).abs().max())
    ref = polar_factor(G.to(torch.float64))
    return float(torch.linalg.matrix_norm(O64 - ref) / math.sqrt(min(O.shape[-2:])))


def singular_value_band(
    coefficients: Coefficients = MUON_COEFFICIENTS, steps: int = 5, sigma_min: float = 1e-3, points: int = 20001
) -> tuple[float, float]:
    """Range of the composed scalar map ``p_steps(...p_1(s))`` over ``s`` in ``[sigma_min, 1]``.

    Newton–Schulz maps each normalised singular value ``s`` (``sigma_i / ||G||_F``) through
    this scalar map, so this is the band the output's singular values are promised to lie
    in when every normalised input singular value is at least ``sigma_min``.
    """
    s = torch.linspace(sigma_min, 1.0, points, dtype=torch.float64)
    for a, b, c in _coefficient_schedule(coefficients, steps):
        s = a * s + b * s**3 + c * s**5
    return float(s.min()), float(s.max())


def _flops(method: str, m: int, n: int, steps: int) -> int:
    return gram_newton_schulz_flops(m, n, steps) if method == "gram" else newton_schulz_flops(m, n, steps)


def orthogonalize_many(
    matrices: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients: Coefficients = MUON_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    exact: bool = False,
    method: str = "newton_schulz",
    batched: bool = True,
    cast_back: bool = True,
) -> list[torch.Tensor]:
    """Orthogonalise 2-D matrices, one batched chain per (shape, device, dtype) when ``batched``.

    ``method``: ``"newton_schulz"``, ``"gram"`` (:func:`gram_newton_schulz`), ``"auto"``
    (whichever of the two needs fewer FLOPs for each shape when the compute dtype is
    float32 or wider; plain Newton–Schulz in bf16) or ``"svd"`` (exact polar
    factor; ``exact=True`` means the same). Returns outputs in input order, cast back to
    each input's dtype unless ``cast_back=False`` (then in the compute dtype, for callers
    that only add them to a parameter: one copy fewer).
    """
    if method not in ORTHOGONALIZATION_METHODS:
        raise ValueError(f"method must be one of {ORTHOGONALIZATION_METHODS}, got {method!r}")
    if exact:
        method = "svd"
    out: list[torch.Tensor | None] = [None] * len(matrices)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, M in enumerate(matrices):
        if M.ndim != 2:
            raise ValueError(f"orthogonalize_many expects 2-D matrices, got shape {tuple(M.shape)} at index {i}")
        key = (tuple(M.shape), M.device, M.dtype)
        buckets[key if batched else (key, i)].append(i)
    for idx in buckets.values():
        shape, in_dtype = matrices[idx[0]].shape, matrices[idx[0]].dtype
        chosen = method
        if method == "auto":  # fewer FLOPs, but the Gram variant runs in fp32+: only where that is the dtype anyway
            low_precision = resolve_ns_dtype(matrices[idx[0]], dtype).itemsize < 4
            chosen = "newton_schulz" if low_precision else min(
                ("newton_schulz", "gram"), key=lambda m: _flops(m, shape[0], shape[1], steps)
            )
        if chosen == "svd":
            results = [polar_factor(matrices[i]) for i in idx]
        else:
            fn = gram_newton_schulz if chosen == "gram" else newton_schulz
            if len(idx) == 1:
                results = [fn(matrices[idx[0]], steps, coefficients, eps, dtype)]
            else:  # cast while stacking: one pass over the inputs instead of two
                first = matrices[idx[0]]
                compute = resolve_ns_dtype(first, dtype)
                if chosen == "gram":
                    compute = torch.promote_types(compute, torch.float32)
                stacked = torch.empty((len(idx), *first.shape), dtype=compute, device=first.device)
                for row, i in zip(stacked, idx):
                    row.copy_(matrices[i])
                results = list(fn(stacked, steps, coefficients, eps, dtype).unbind(0))
        for i, r in zip(idx, results):
            out[i] = r.to(in_dtype) if cast_back else r
    return out  # type: ignore[return-value]
