"""``quadratic``: DeepOBS's noisy 100-D quadratic with a deep-learning-like Hessian spectrum.

Schneider, Balles & Hennig, "DeepOBS: A Deep Learning Optimizer Benchmark Suite"
(arXiv:1903.05499), test problem ``quadratic_deep``. The per-example loss is

    l(θ; x) = ½ (θ − x)ᵀ Q (θ − x),    Q = R diag(λ) Rᵀ,

with 90 of the 100 eigenvalues λ drawn from U(0, 1) and 10 from U(30, 60) (the bulk and
outliers reported for neural networks by Chaudhari et al., arXiv:1611.01838), R a
Haar-random rotation, x ~ N(0, σ² I) with σ = 0.6 and θ initialised to all ones, as in
DeepOBS. The batch size is 128 (DeepOBS's setting).

The problem (λ and R) comes from a fixed seed, so it is the same for every run; the run
seed changes only the noise x, as in DeepOBS, where the initial θ is deterministic too.

Where we deviate from DeepOBS, and why:

- DeepOBS draws a finite training set of 1,000 points (and a test set of 1,000) once and
  shuffles it; we draw fresh x for every batch, a pure function of (seed, step). The
  objective is then the population loss, whose minimiser is exactly θ* = 0.
- ``evaluate`` returns that population loss in closed form as ``"loss"``,
  E_x l(θ; x) = ½ θᵀQθ + ½ σ² tr(Q), instead of a mean over a sampled test set, so the
  metric carries no sampling noise. Its floor, ½ σ² tr(Q), is recorded as
  ``info["optimum_loss"]``.
- R is drawn as the Q factor of a Gaussian matrix with the signs of R's diagonal fixed
  (Mezzadri, "How to generate random matrices from the classical compact groups",
  arXiv:math-ph/0609050), which is Haar on O(100); DeepOBS uses the subgroup algorithm of
  Diaconis & Shahshahani on SO(100). The sign of a column of R does not change Q, so the
  distribution of problems is the same; the particular draw differs from DeepOBS's.
"""

from __future__ import annotations

import torch
from torch import nn

from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads.base import TabulatedWorkload, Task

__all__ = ["NoisyQuadratic", "QuadraticWorkload", "deep_hessian", "haar_rotation"]

DIM = 100
BATCH_SIZE = 128
NOISE_STD = 0.6  # DeepOBS's noise_level
PROBLEM_SEED = 42  # fixes λ and R: every run sees the same problem
DEFAULT_STEPS = 300


def haar_rotation(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal ``dim`` × ``dim`` matrix (float64), QR with the sign fix."""
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r))  # make the factorisation unique, hence Haar


def deep_hessian(dim: int = DIM, seed: int = PROBLEM_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, eigenvalues)`` in float64: 90% of eigenvalues in U(0, 1), 10% in U(30, 60), Haar-rotated."""
    generator = torch.Generator().manual_seed(seed)
    n_large = dim // 10
    bulk = torch.rand(dim - n_large, generator=generator, dtype=torch.float64)
    outliers = 30.0 + 30.0 * torch.rand(n_large, generator=generator, dtype=torch.float64)
    eigenvalues = torch.cat([bulk, outliers])
    rotation = haar_rotation(dim, generator)
    hessian = (rotation * eigenvalues) @ rotation.T
    return (hessian + hessian.T) / 2, eigenvalues


class NoisyQuadratic(nn.Module):
    """Holds θ; ``forward(x)`` returns the per-example losses ½ (θ − x)ᵀ Q (θ − x), shape (B,)."""

    def __init__(self, hessian: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(hessian.shape[0]))
        # Not saved in checkpoints: it is rebuilt from the fixed problem seed.
        self.register_buffer("hessian", hessian.to(torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = self.theta - x
        return 0.5 * ((diff @ self.hessian) * diff).sum(dim=-1)


class QuadraticWorkload(TabulatedWorkload):
    """DeepOBS ``quadratic_deep``; ``evaluate`` returns the expected (population) loss."""

    name = "quadratic"
    scales = ("default",)
    steps_by_scale = {"default": DEFAULT_STEPS}
    metric = "expected loss ½θᵀQθ + ½σ²tr(Q) (closed form)"

    def build(self, scale: str = "default", seed: int = 0, **options: object) -> Task:
        self.check_scale(scale)
        self.check_no_options(options)
        hessian, eigenvalues = deep_hessian()
        model = NoisyQuadratic(hessian)
        floor = 0.5 * NOISE_STD**2 * float(torch.trace(hessian))

        def train_batch(step: int) -> torch.Tensor:
            generator = generator_for(seed, step, "quadratic")
            return NOISE_STD * torch.randn(BATCH_SIZE, DIM, generator=generator)

        def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            return model(batch.to(model.theta.device, model.theta.dtype)).mean()

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            theta = model.theta.detach().to("cpu", torch.float64)
            return {"loss": float(0.5 * theta @ hessian @ theta) + floor}

        info = {
            "scale": scale,
            "dim": DIM,
            "batch_size": BATCH_SIZE,
            "noise_std": NOISE_STD,
            "problem_seed": PROBLEM_SEED,
            "eigenvalue_min": float(eigenvalues.min()),
            "eigenvalue_max": float(eigenvalues.max()),
            "hessian_trace": float(torch.trace(hessian)),
            "optimum_loss": floor,
            "params_total": DIM,
        }
        return Task(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                    tokens_per_step=BATCH_SIZE, sampled_loss=None, info=info)


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(QuadraticWorkload())
