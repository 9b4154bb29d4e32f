"""``logreg``: binary logistic regression on three fixed synthetic problems (a convex suite).

The scales are the problems; each differs from ``isotropic`` in one respect:

- ``isotropic``: features x ~ N(0, I_50); labels y ~ Bernoulli(σ(x·w* + b*)), so the
  classes overlap and the empirical risk has a finite minimiser.
- ``ill_conditioned``: the same, but the feature covariance R diag(s²) Rᵀ has standard
  deviations s spaced geometrically from 1 to 0.01 (condition number 10⁴) in a
  Haar-random basis R, so no per-coordinate (diagonal) preconditioner can undo it. w*
  gives every eigendirection the same share of the logit variance, hence weights up to
  100× larger along the flat directions: an optimizer must travel far where the
  curvature is small.
- ``separable``: isotropic features labelled by sign(x·w*) with every point within a
  margin 0.1 of the hyperplane redrawn. The logistic loss has no minimiser (its infimum
  is 0, approached as ‖w‖ → ∞ along the max-margin direction; Soudry et al., "The
  Implicit Bias of Gradient Descent on Separable Data", arXiv:1710.10345), so what the
  optimizer does at late times decides the validation loss.

Each problem (features, labels, w*) comes from a fixed seed, so it is the same for every
run: 2,000 training and 2,000 validation points, drawn independently from one
distribution. The run seed only orders the minibatches of 64 (without replacement,
epoch by epoch). The model is a single ``nn.Linear(50, 1)`` named ``head`` (a readout
for :func:`optarena.optim.partition_parameters`), initialised at zero, as is usual
for a convex problem; the initial loss is therefore log 2 on every problem.

``evaluate`` returns the mean validation log-loss (nats) as ``"loss"``. For the two noisy problems
``info`` records the loss of the exact empirical-risk minimiser (found by Newton's
method in float64) on the training and validation sets, the floor that plain training
approaches, and the validation loss of the generating weights (w*, b*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads._shuffle import epoch_batch_indices
from optarena.arena.workloads.base import TabulatedWorkload, Task
from optarena.arena.workloads.quadratic import haar_rotation

__all__ = ["LogRegProblem", "LogisticRegression", "LogRegWorkload", "PROBLEMS", "make_problem", "newton_logistic"]

DIM = 50
N_TRAIN = 2000
N_VALIDATION = 2000
BATCH_SIZE = 64
LOGIT_STD = 3.0  # std of x·w* over the feature distribution: overlapping but informative classes
BIAS = 0.5
MARGIN = 0.1  # the separable problem's margin, in feature units
PROBLEM_SEED = 42
DEFAULT_STEPS = {"isotropic": 300, "ill_conditioned": 600, "separable": 300}


@dataclass(frozen=True)
class LogRegProblem:
    feature_std_min: float  # standard deviations spaced geometrically from 1 down to this
    separable: bool


PROBLEMS: dict[str, LogRegProblem] = {
    "isotropic": LogRegProblem(feature_std_min=1.0, separable=False),
    "ill_conditioned": LogRegProblem(feature_std_min=0.01, separable=False),
    "separable": LogRegProblem(feature_std_min=1.0, separable=True),
}


def make_problem(name: str) -> dict[str, torch.Tensor]:
    """The fixed data of problem ``name`` (float64): train/validation features and labels, w*, b*."""
    problem = PROBLEMS[name]
    generator = generator_for(PROBLEM_SEED, 0, f"logreg-{name}")
    stds = torch.logspace(0.0, math.log10(problem.feature_std_min), DIM, dtype=torch.float64)
    rotation = haar_rotation(DIM, generator)
    mixing = stds[:, None] * rotation.T  # x = z @ mixing has covariance R diag(s²) Rᵀ
    # Every eigendirection carries the same share of the logit variance: weight ∝ 1/s there.
    direction = torch.randn(DIM, generator=generator, dtype=torch.float64).sign() / stds
    w_star = rotation @ direction
    w_star = w_star * (LOGIT_STD / float(torch.sqrt(w_star @ (mixing.T @ mixing) @ w_star)))

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if problem.separable:
            unit = w_star / w_star.norm()
            kept = torch.empty(0, DIM, dtype=torch.float64)
            while kept.shape[0] < n:  # rejection: drop points within the margin
                x = torch.randn(2 * n, DIM, generator=generator, dtype=torch.float64) @ mixing
                kept = torch.cat([kept, x[(x @ unit).abs() >= MARGIN]])
            x = kept[:n]
            return x, (x @ w_star > 0).to(torch.float64)
        x = torch.randn(n, DIM, generator=generator, dtype=torch.float64) @ mixing
        probs = torch.sigmoid(x @ w_star + BIAS)
        return x, torch.bernoulli(probs, generator=generator)

    x_train, y_train = draw(N_TRAIN)
    x_val, y_val = draw(N_VALIDATION)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
            "w_star": w_star, "b_star": torch.tensor(0.0 if problem.separable else BIAS, dtype=torch.float64),
            "stds": stds}


def _log_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(x @ w + b, y))


def newton_logistic(x: torch.Tensor, y: torch.Tensor, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The unregularised logistic-regression minimiser ``(w, b)`` by damped Newton (float64).

    Only for data that are not separable (otherwise there is no minimiser).
    """
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    theta = torch.zeros(design.shape[1], dtype=x.dtype)

    def objective(t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(design @ t, y)

    for _ in range(iterations):
        probs = torch.sigmoid(design @ theta)
        gradient = design.T @ (probs - y) / y.numel()
        hessian = (design.T * (probs * (1 - probs))) @ design / y.numel()
        step = torch.linalg.solve(hessian, gradient)
        decrement = float(gradient @ step)
        if decrement < 1e-20:
            break
        size, current = 1.0, objective(theta)
        while objective(theta - size * step) > current - 0.25 * size * decrement and size > 1e-8:
            size /= 2  # Armijo backtracking
        theta = theta - size * step
    return theta[:-1], theta[-1]


class LogisticRegression(nn.Module):
    """``forward(x)`` returns the logits x·w + b, shape (B,); w and b start at zero."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).squeeze(-1)


class LogRegWorkload(TabulatedWorkload):
    """Binary logistic regression; ``evaluate`` returns the validation log-loss."""

    name = "logreg"
    scales = tuple(PROBLEMS)
    steps_by_scale = DEFAULT_STEPS
    metric = "validation log-loss (nats)"

    def build(self, scale: str = "isotropic", seed: int = 0, **options: object) -> Task:
        self.check_scale(scale)
        self.check_no_options(options)
        data = make_problem(scale)
        x_train, y_train = data["x_train"].float(), data["y_train"].float()
        x_val, y_val = data["x_val"].float(), data["y_val"].float()
        model = LogisticRegression(DIM)

        def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = epoch_batch_indices(seed, step, N_TRAIN, BATCH_SIZE, "logreg")
            return x_train[index], y_train[index]

        def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            weight = model.head.weight
            return model(x.to(weight.device, weight.dtype)).float()

        def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            logits = _logits(model, x)
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.device))

        def sampled_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            """Log-loss against labels drawn from the model's own Bernoulli predictions."""
            logits = _logits(model, batch[0])
            with torch.no_grad():
                sampled = torch.bernoulli(torch.sigmoid(logits))
            return F.binary_cross_entropy_with_logits(logits, sampled)

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            logits = _logits(model, x_val)
            return {"loss": float(F.binary_cross_entropy_with_logits(logits, y_val.to(logits.device)))}

        stds = data["stds"]
        info = {
            "scale": scale,
            "problem": scale,
            "dim": DIM,
            "n_train": N_TRAIN,
            "n_validation": N_VALIDATION,
            "batch_size": BATCH_SIZE,
            "problem_seed": PROBLEM_SEED,
            "separable": PROBLEMS[scale].separable,
            "feature_condition_number": float((stds.max() / stds.min()) ** 2),
            "train_positive_fraction": float(data["y_train"].mean()),
            "params_total": DIM + 1,
            "initial_loss": math.log(2.0),
        }
        if not PROBLEMS[scale].separable:
            w_hat, b_hat = newton_logistic(data["x_train"], data["y_train"])
            info["erm_train_loss"] = _log_loss(data["x_train"], data["y_train"], w_hat, b_hat)
            info["erm_validation_loss"] = _log_loss(data["x_val"], data["y_val"], w_hat, b_hat)
            info["true_weights_validation_loss"] = _log_loss(data["x_val"], data["y_val"], data["w_star"],
                                                             data["b_star"])
        return Task(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                    tokens_per_step=BATCH_SIZE, sampled_loss=sampled_loss, info=info)


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(LogRegWorkload())
