"""``matrix_sensing``: over-parameterised low-rank matrix recovery from Gaussian measurements.

Li, Ma & Zhang, "Algorithmic Regularization in Over-parameterized Matrix Sensing and
Neural Networks with Quadratic Activations" (COLT 2018, arXiv:1712.09203), proving the
conjecture of Gunasekar et al., "Implicit Regularization in Matrix Factorization"
(arXiv:1705.09280). A rank-r positive semi-definite matrix X* = U* U*ᵀ (d × d) is observed
through m linear measurements yᵢ = ⟨Aᵢ, X*⟩, Aᵢ with i.i.d. N(0, 1) entries, m below the
d(d+1)/2 free entries of a symmetric matrix. The model is a full d × d factor U
(``model.factor``, a hidden matrix for :func:`optarena.optim.partition_parameters`),
trained on

    f(U) = 1/(2m) Σᵢ (⟨Aᵢ, U Uᵀ⟩ − yᵢ)²    (full batch, as in the paper).

f has global minima with U Uᵀ far from X*; from a small initialisation U₀ = α B gradient
descent nevertheless finds the low-rank solution (the paper's theorem, for
m = Õ(d r²)). An optimizer whose update does not keep that implicit bias (e.g. one that
spreads its update evenly over all directions) can fit the measurements and recover the
wrong matrix; this workload measures that.

``evaluate`` returns the relative recovery error ‖U Uᵀ − X*‖_F / ‖X*‖_F as ``"loss"``
(closed form, no sampling noise; 1.0 at U = 0) and, as ``"heldout_measurement_loss"``, the
mean squared residual on 2·m held-out measurements; the training-measurement loss f is what
the trainer logs as ``train_loss``.

Scales: ``small`` (d = 24, r = 2, m = 5·d·r = 240), ``scarce`` (the same with
m = 2.5·d·r = 120, where plain gradient descent still recovers X* while adaptive and
orthogonalised updates fit the training measurements with a worse recovery) and
``base`` (d = 48, r = 3, m = 720).

Choices of ours, not the paper's: X* has r equal eigenvalues 1 (U* = a Haar-random
d × r frame), where the paper allows a condition number κ; A is not symmetrised (it
changes nothing, since ⟨A, UUᵀ⟩ = ⟨(A + Aᵀ)/2, UUᵀ⟩); B has i.i.d. N(0, 1/d) entries
(the paper's analysis uses B = I); m is a fixed multiple of d·r chosen to fit a CPU test,
not the paper's Õ(d r²). X* and the measurements are fixed by a problem seed; the run
seed draws B. ``build(scale, seed, **overrides)`` accepts any :class:`SensingConfig`
field, e.g. ``init_scale`` or ``oversampling``. Note that for enough measurements the
PSD constraint alone can make X* the only consistent PSD matrix (Geyer, Kyrillidis &
Kalev, arXiv:1806.02046), in which case any optimizer that fits the data recovers it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads.base import ConfiguredWorkload, Task
from optarena.arena.workloads.quadratic import haar_rotation

__all__ = ["FactorModel", "MatrixSensingWorkload", "SCALES", "SensingConfig", "make_problem"]

PROBLEM_SEED = 42


@dataclass(frozen=True)
class SensingConfig:
    dim: int = 24
    rank: int = 2
    oversampling: float = 5.0  # m = round(oversampling · dim · rank) training measurements
    init_scale: float = 1e-3  # α: U₀ = α B, B with N(0, 1/dim) entries

    def __post_init__(self) -> None:
        for name in ("dim", "rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SensingConfig.{name} must be a positive integer, got {name}={value!r}")
        if self.rank > self.dim:
            raise ValueError(f"SensingConfig.rank must be <= dim, got rank={self.rank}, dim={self.dim}")
        for name in ("oversampling", "init_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SensingConfig.{name} must be a finite number > 0, got {name}={value!r}")
        if self.n_measurements >= self.free_entries:
            raise ValueError(
                f"SensingConfig needs fewer measurements than the {self.free_entries} free entries of a symmetric "
                f"{self.dim}x{self.dim} matrix (else no implicit regularisation is needed), "
                f"got oversampling={self.oversampling} -> {self.n_measurements} measurements"
            )

    @property
    def n_measurements(self) -> int:
        return max(1, round(self.oversampling * self.dim * self.rank))

    @property
    def free_entries(self) -> int:
        return self.dim * (self.dim + 1) // 2


# "scarce" halves the measurements of "small": there plain gradient descent still recovers X*,
# while optimizers that spread their update over all directions fit a wrong matrix.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"dim": 24, "rank": 2},
    "scarce": {"dim": 24, "rank": 2, "oversampling": 2.5},
    "base": {"dim": 48, "rank": 3},
}
DEFAULT_STEPS = {"small": 400, "scarce": 400, "base": 400}


def make_problem(config: SensingConfig) -> dict[str, torch.Tensor]:
    """X* (float64), and train/held-out measurement matrices (flattened, float32) with their values."""
    generator = generator_for(PROBLEM_SEED, 0, f"matrix-sensing-{config.dim}-{config.rank}")
    frame = haar_rotation(config.dim, generator)[:, : config.rank]
    target = frame @ frame.T
    m = config.n_measurements
    sensing = torch.randn(3 * m, config.dim * config.dim, generator=generator, dtype=torch.float64)
    values = sensing @ target.flatten()
    return {"target": target, "train_a": sensing[:m].float(), "train_y": values[:m].float(),
            "heldout_a": sensing[m:].float(), "heldout_y": values[m:].float()}


class FactorModel(nn.Module):
    """Holds the d × d factor U; ``forward(a)`` returns the predictions ⟨Aᵢ, U Uᵀ⟩ for flattened Aᵢ."""

    def __init__(self, dim: int, init: torch.Tensor) -> None:
        super().__init__()
        self.factor = nn.Parameter(init.reshape(dim, dim).clone())

    def matrix(self) -> torch.Tensor:
        return self.factor @ self.factor.T

    def forward(self, sensing: torch.Tensor) -> torch.Tensor:
        return sensing @ self.matrix().flatten()


class MatrixSensingWorkload(ConfiguredWorkload):
    """Low-rank matrix sensing with a full-rank factor; ``evaluate`` returns the relative recovery error."""

    name = "matrix_sensing"
    scales = tuple(SCALES)
    steps_by_scale = DEFAULT_STEPS
    metric = "relative recovery error ‖UUᵀ − X*‖_F / ‖X*‖_F"
    config_class = SensingConfig
    presets = SCALES

    def build(self, scale: str = "small", seed: int = 0, **overrides: Any) -> Task:
        config = self.config(scale, **overrides)
        problem = make_problem(config)
        target = problem["target"]
        target_norm = float(target.norm())
        init_generator = generator_for(seed, 0, "matrix-sensing-init")
        init = torch.randn(config.dim, config.dim, generator=init_generator)
        init = init * (config.init_scale / math.sqrt(config.dim))
        model = FactorModel(config.dim, init)
        batch = (problem["train_a"], problem["train_y"])

        def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            return batch  # full-batch gradient descent, as in the paper: the same for every step

        def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            sensing, values = batch
            factor = model.factor
            residual = model(sensing.to(factor.device, factor.dtype)).float() - values.to(factor.device)
            return 0.5 * residual.square().mean()

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            matrix = model.matrix().detach().to("cpu", torch.float64)
            residual = problem["heldout_a"].double() @ matrix.flatten() - problem["heldout_y"].double()
            return {"loss": float((matrix - target).norm()) / target_norm,
                    "heldout_measurement_loss": float(0.5 * residual.square().mean())}

        info = {
            "scale": scale,
            "config": asdict(config),
            "measurements": config.n_measurements,
            "heldout_measurements": 2 * config.n_measurements,
            "free_entries": config.free_entries,  # > measurements: under-determined
            "problem_seed": PROBLEM_SEED,
            "target_fro_norm": target_norm,
            "params_total": config.dim * config.dim,
        }
        return Task(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                    tokens_per_step=config.n_measurements, sampled_loss=None, info=info)


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(MatrixSensingWorkload())
