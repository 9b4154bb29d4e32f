"""Newton–Schulz, its Gram-space variant and the exact polar factor."""

import pytest
import torch

from optarena.optim.orthogonalize import (
    MUON_COEFFICIENTS, cpu_has_fast_bf16, gram_newton_schulz, gram_newton_schulz_flops, newton_schulz, newton_schulz_flops,
    orthogonality_error, orthogonalize_many, polar_factor, resolve_ns_dtype, singular_value_band,
)


def _matrix_with_spectrum(m: int, n: int, singular_values: torch.Tensor) -> torch.Tensor:
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64)).Q
    return U @ torch.diag(singular_values) @ V.T


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24)])
def test_singular_values_follow_the_scalar_map_and_land_in_the_promised_band(shape):
    k = min(shape)
    sigma = torch.linspace(0.05, 1.0, k, dtype=torch.float64)
    G = _matrix_with_spectrum(*shape, sigma)
    out = newton_schulz(G, dtype=torch.float64)
    # every step is an odd polynomial in the singular values of the Frobenius-normalised input
    s = sigma / torch.linalg.matrix_norm(G)
    for _ in range(5):
        a, b, c = MUON_COEFFICIENTS
        s = a * s + b * s**3 + c * s**5
    got = torch.linalg.svdvals(out)
    assert torch.allclose(got.sort().values, s.sort().values, atol=1e-10)
    low, high = singular_value_band(MUON_COEFFICIENTS, 5, sigma_min=float((sigma / torch.linalg.matrix_norm(G)).min()))
    assert low - 1e-9 <= float(got.min()) and float(got.max()) <= high + 1e-9
    # the band the default coefficients promise for well-conditioned inputs: roughly [0.5, 1.5], not 1
    assert 0.45 < low < 0.8 and 1.0 < high < 1.25


def test_band_widens_for_tiny_singular_values_and_more_steps_help():
    assert singular_value_band(sigma_min=1e-4)[0] < singular_value_band(sigma_min=1e-2)[0]
    assert singular_value_band(steps=8, sigma_min=1e-4)[0] > singular_value_band(steps=5, sigma_min=1e-4)[0]


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_batched_equals_per_matrix(dtype, atol):
    mats = [torch.randn(12, 20) for _ in range(3)] + [torch.randn(20, 12)]
    batched = orthogonalize_many(mats, dtype=dtype, batched=True)
    single = orthogonalize_many(mats, dtype=dtype, batched=False)
    direct = [newton_schulz(M, dtype=dtype) for M in mats]
    for b, s, d in zip(batched, single, direct):
        assert b.dtype == torch.float32 and d.dtype == dtype  # cast back to the input's dtype
        assert torch.allclose(b, s, atol=atol) and torch.equal(s, d.float())
    stacked = newton_schulz(torch.stack(mats[:3]), dtype=dtype)
    for i in range(3):
        assert torch.allclose(stacked[i].float(), direct[i].float(), atol=atol)


def test_exact_option_gives_u_v_transpose():
    G = torch.randn(9, 14, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    for out in (orthogonalize_many([G], exact=True)[0], orthogonalize_many([G], method="svd")[0], polar_factor(G)):
        assert torch.allclose(out, U @ Vh, atol=1e-12)
        assert torch.allclose(out @ out.T, torch.eye(9, dtype=torch.float64), atol=1e-12)
    assert orthogonality_error(polar_factor(G), G) < 1e-12


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (32, 32), (5, 3, 48)])
@pytest.mark.parametrize("steps", [1, 5])
def test_gram_iteration_is_the_same_polynomial(shape, steps):
    G = torch.randn(shape, dtype=torch.float64)
    ref = newton_schulz(G, steps=steps)
    assert torch.allclose(gram_newton_schulz(G, steps=steps), ref, atol=1e-11)
    G32 = G.float()
    fp32 = dict(steps=steps, dtype=torch.float32)
    assert torch.allclose(gram_newton_schulz(G32, **fp32), newton_schulz(G32, **fp32), atol=2e-5)


def test_gram_iteration_needs_far_fewer_flops_on_mlp_matrices_at_equal_error():
    d = 48
    G = torch.randn(d, 4 * d, dtype=torch.float64)
    assert newton_schulz_flops(d, 4 * d) / gram_newton_schulz_flops(d, 4 * d) >= 1.5
    assert abs(orthogonality_error(gram_newton_schulz(G), G) - orthogonality_error(newton_schulz(G), G)) < 1e-10
    # square matrices gain nothing, so "auto" keeps the plain iteration there
    assert gram_newton_schulz_flops(d, d) > newton_schulz_flops(d, d)
    square, wide = torch.randn(d, d), torch.randn(d, 4 * d)
    auto = orthogonalize_many([square, wide], method="auto", dtype=torch.float32)
    assert torch.equal(auto[0], newton_schulz(square, dtype=torch.float32))
    assert torch.equal(auto[1], gram_newton_schulz(wide, dtype=torch.float32))
    # in bf16 the plain iteration is kept (the Gram variant would need fp32)
    assert torch.equal(orthogonalize_many([wide], method="auto", dtype=torch.bfloat16)[0],
                       newton_schulz(wide, dtype=torch.bfloat16).float())


def test_coefficient_schedules():
    G = torch.randn(10, 30, dtype=torch.float64)
    assert torch.equal(newton_schulz(G, 3, [MUON_COEFFICIENTS] * 3), newton_schulz(G, 3, MUON_COEFFICIENTS))
    # the last triple repeats when the schedule is shorter than the number of steps
    cubic = (1.5, -0.5, 0.0)
    two = newton_schulz(G, 4, [MUON_COEFFICIENTS, cubic])
    X = G / torch.linalg.matrix_norm(G)
    for a, b, c in [MUON_COEFFICIENTS, cubic, cubic, cubic]:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    manual = X
    assert torch.allclose(two, manual, atol=1e-12)
    # the classical cubic iteration converges to the exact polar factor
    assert orthogonality_error(newton_schulz(G, 60, cubic), G) < 1e-8
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(G, 2, [(1.0, 2.0)])


def test_dtypes_and_errors():
    G = torch.randn(6, 8)
    fast = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32  # the CPU default
    assert resolve_ns_dtype(G, None) == fast and resolve_ns_dtype(G.bfloat16(), None) == fast
    assert newton_schulz(G).dtype == fast and newton_schulz(G.bfloat16()).dtype == fast
    assert newton_schulz(G.double()).dtype == torch.float64
    assert newton_schulz(G, dtype=torch.float32).dtype == torch.float32
    assert newton_schulz(G, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert gram_newton_schulz(G, dtype=torch.bfloat16).dtype == torch.float32  # promoted on purpose
    assert orthogonalize_many([G.bfloat16()])[0].dtype == torch.bfloat16
    assert torch.equal(newton_schulz(torch.zeros(3, 4)), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        newton_schulz(torch.randn(5))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(G, steps=-1)
    with pytest.raises(ValueError, match="method"):
        orthogonalize_many([G], method="qr")
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize_many([torch.randn(2, 3, 4)])
