"""Loss-curve prediction with the learning-rate-annealing scaling law.

Tissue, Wang, Wang 2024, "Scaling Law with Learning Rate Annealing" (arXiv:2408.11029).
The loss after s steps follows

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)
    S1(s) = sum_{i<=s} eta_i                      forward area
    S2(s) = sum_{i<=s} m_i,  m_i = lambda m_{i-1} + (eta_{i-1} - eta_i)   annealing area

with lambda the decay factor of the "momentum" of learning-rate drops (0.999 by default).
Fit (L0, A, alpha, C) on one or two recorded runs (e.g. constant + cosine), then predict the
whole curve of any other schedule from its learning rates alone.

Conventions. A curve is ``(lrs, losses)``: ``lrs[i]`` is the learning rate of update i
(multipliers or absolute values: any unit, as long as predictions use the same unit)
and ``losses[i]`` the loss measured *after* that update, so S1 includes ``lrs[i]``
(the law's L(i+1)). ``NaN`` losses are missing (e.g. evaluated every k steps).

As in the paper (§3.4, and its fitting script), S1 and S2 count the warmup steps as if
the rate were already at its peak, and warmup losses are left out of the fit. Warmup is
detected as the strictly increasing prefix of ``lrs`` unless given.

Fit: the sum of Huber(delta=1e-3) losses on log L_obs - log L_pred, minimised by scipy's
L-BFGS-B (analytic gradient) from several starts, all parameters >= 0 (alpha <= 4).
Deviation: the paper starts from a fixed 4-D grid (L0 in {0.1, 2.1}, A, C in {1, 11.5, 22},
alpha in {0, 0.4, 0.8}) that assumes its units (absolute lr ~1e-4, losses ~3). We work in
normalised units (S1 and S2 divided by their largest fitted values; converted back at the
end, so any lr unit and loss scale work) and take the starts from a profile over alpha: for
each alpha on a grid, (L0, A, C) >= 0 solve a linear least-squares problem exactly, and the
best few alphas start L-BFGS-B: a handful of starts near the optimum instead of the grid's
54 blind ones. When no fitted curve anneals (S2 = 0 everywhere, e.g. a single constant run), C cannot be
identified and is fixed at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "AnnealingLawParams", "annealing_areas", "compare_curves", "detect_warmup", "fit_annealing_law",
    "plot_predictions", "predict_curve",
]

_ALPHA_MAX = 4.0
_ALPHA_GRID = np.linspace(0.02, 2.0, 34)
_STARTS = 4  # best alphas of the grid that start an L-BFGS-B run


def detect_warmup(lrs: Sequence[float] | np.ndarray) -> int:
    """Number of leading steps before the first peak: the length of the strictly increasing prefix."""
    lr = np.asarray(lrs, dtype=np.float64)
    rising = np.diff(lr) > 0
    return int(np.argmin(rising)) if not rising.all() else len(rising)


def annealing_areas(
    lrs: Sequence[float] | np.ndarray, decay_factor: float = 0.999, warmup: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each update, with the warmup steps counted at the peak rate."""
    from scipy.signal import lfilter  # scipy is imported only when a curve is computed

    lr = np.asarray(lrs, dtype=np.float64).ravel()
    if lr.size == 0 or not np.all(np.isfinite(lr)) or np.any(lr < 0):
        raise ValueError("learning rates must be a non-empty sequence of finite values >= 0")
    if not 0.0 <= decay_factor < 1.0:
        raise ValueError(f"decay_factor (lambda) must be in [0, 1), got decay_factor={decay_factor}")
    k = detect_warmup(lr) if warmup is None else min(int(warmup), lr.size - 1)
    effective = lr.copy()
    effective[:k] = lr[k]
    drops = np.zeros_like(effective)
    drops[1:] = effective[:-1] - effective[1:]
    momentum = lfilter([1.0], [1.0, -decay_factor], drops)  # m_i = lambda m_{i-1} + drop_i
    return np.cumsum(effective), np.cumsum(momentum)


def _law(L0: float, A: float, alpha: float, C: float, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return L0 + A * np.power(s1, -alpha) - C * s2


@dataclass(frozen=True)
class AnnealingLawParams:
    """Fitted L(s) = L0 + A S1^-alpha - C S2, in the learning-rate unit of the fitted curves."""

    L0: float
    A: float
    alpha: float
    C: float
    decay_factor: float = 0.999
    r2: float = math.nan
    r2_per_curve: tuple[float, ...] = ()
    n_points: int = 0
    objective: float = math.nan
    annealing_identified: bool = True
    notes: tuple[str, ...] = field(default=())

    def predict(self, lrs: Sequence[float] | np.ndarray, warmup: int | None = None) -> np.ndarray:
        return predict_curve(self, lrs, warmup)

    def __str__(self) -> str:
        return (
            f"L(s) = {self.L0:.4g} + {self.A:.4g} * S1^-{self.alpha:.4g} - {self.C:.4g} * S2"
            f"  (lambda={self.decay_factor}, R^2={self.r2:.4f} on {self.n_points} points)"
        )


def predict_curve(
    params: AnnealingLawParams, lrs: Sequence[float] | np.ndarray, warmup: int | None = None
) -> np.ndarray:
    """The predicted loss after each update of a schedule with learning rates ``lrs``.

    Warmup steps are predicted as if at the peak rate (the law does not model warmup).
    """
    s1, s2 = annealing_areas(lrs, params.decay_factor, warmup)
    return _law(params.L0, params.A, params.alpha, params.C, s1, s2)


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    if observed.size < 2:
        return math.nan
    total = float(np.sum((observed - observed.mean()) ** 2))
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / total if total > 0 else math.nan


def _profile_starts(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, fit_c: bool) -> list[np.ndarray]:
    """Starting points for L-BFGS-B: the best few alphas of a grid, each with (L0, A, C) >= 0 solved exactly.

    For fixed alpha the law is linear in (L0, A, C); non-negative least squares on the
    relative residual (about the log-residual) gives the other three. This replaces the
    paper's blind 4-D start grid: far fewer L-BFGS-B runs, and none starts far off.
    """
    from scipy.optimize import nnls

    columns = [np.ones_like(x1), None, -x2] if fit_c else [np.ones_like(x1), None]
    candidates = []
    for alpha in _ALPHA_GRID:
        columns[1] = x1**-alpha
        design = np.stack(columns, axis=1) / y[:, None]
        coef, residual = nnls(design, np.ones_like(y))
        candidates.append((residual, np.array([coef[0], coef[1], alpha, coef[2] if fit_c else 0.0])))
    candidates.sort(key=lambda item: item[0])
    return [theta for _, theta in candidates[:_STARTS]]


def _huber_objective(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, delta: float, fit_c: bool):
    """Mean Huber loss of log-residuals (divided by delta^2, so L-BFGS-B's tolerances fit) and its gradient."""
    log_x1 = np.log(x1)
    log_y = np.log(y)
    scale = 1.0 / (delta**2 * y.size)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        L0, A, alpha, C = theta
        power = np.exp(-alpha * log_x1)
        pred = L0 + A * power - C * x2
        ok = pred > 1e-12  # a non-positive prediction is penalised as if it were 1e-12, with no gradient
        safe = np.where(ok, pred, 1e-12)
        residual = log_y - np.log(safe)
        small = np.abs(residual) <= delta
        value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
        dpred = np.where(ok, -np.where(small, residual, delta * np.sign(residual)) / safe, 0.0)
        grad = np.array([dpred.sum(), dpred @ power, -A * (dpred @ (power * log_x1)), -(dpred @ x2) if fit_c else 0.0])
        return float(value.sum()) * scale, grad * scale

    return objective


def fit_annealing_law(
    curves: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    decay_factor: float | Sequence[float] = 0.999,
    huber_delta: float = 1e-3,
    warmup: int | Sequence[int | None] | None = None,
    fit_from: int = 0,
) -> AnnealingLawParams:
    """Fit the annealing law jointly on ``curves`` = [(lrs, losses), ...] (see module docstring).

    Args:
        decay_factor: lambda of the annealing momentum (the paper fixes 0.999); given several,
            the law is fitted for each and the lowest Huber objective wins (an option of ours).
        huber_delta: Huber threshold on log-loss residuals.
        warmup: warmup length per curve (one int for all, or a list); None detects it.
        fit_from: also leave out losses before this update index (early transients).
    """
    if len(curves) == 0:
        raise ValueError("fit_annealing_law needs at least one (lrs, losses) curve")
    if isinstance(decay_factor, Sequence):
        if len(decay_factor) == 0:
            raise ValueError("decay_factor must be a number or a non-empty sequence of numbers")
        fits = [fit_annealing_law(curves, decay_factor=float(lam), huber_delta=huber_delta, warmup=warmup,
                                  fit_from=fit_from) for lam in decay_factor]
        return min(fits, key=lambda fit: fit.objective)
    if huber_delta <= 0:
        raise ValueError(f"huber_delta must be > 0, got huber_delta={huber_delta}")
    warmups = list(warmup) if isinstance(warmup, Sequence) else [warmup] * len(curves)
    if len(warmups) != len(curves):
        raise ValueError(f"warmup has {len(warmups)} entries for {len(curves)} curves")
    s1_parts, s2_parts, y_parts, ids = [], [], [], []
    for index, ((lrs, losses), wu) in enumerate(zip(curves, warmups)):
        lr = np.asarray(lrs, dtype=np.float64).ravel()
        loss = np.asarray(losses, dtype=np.float64).ravel()
        if lr.shape != loss.shape:
            raise ValueError(f"curve {index}: {lr.size} learning rates but {loss.size} losses (need one per step)")
        k = detect_warmup(lr) if wu is None else int(wu)
        s1, s2 = annealing_areas(lr, decay_factor, k)
        keep = np.isfinite(loss)
        keep[: max(k, fit_from)] = False
        if np.any(loss[keep] <= 0):
            raise ValueError(f"curve {index}: losses must be > 0 (the fit is on log-loss)")
        keep &= s1 > 0
        s1_parts.append(s1[keep])
        s2_parts.append(s2[keep])
        y_parts.append(loss[keep])
        ids.append(np.full(int(keep.sum()), index))
    s1, s2, y, curve_id = (np.concatenate(p) for p in (s1_parts, s2_parts, y_parts, ids))
    if y.size < 4:
        raise ValueError(f"need at least 4 fitted loss values after warmup, got {y.size}")

    # normalised units (see module docstring)
    s1_ref = float(s1.max())
    s2_ref = float(np.abs(s2).max())
    identified = s2_ref > 0
    x1 = s1 / s1_ref
    x2 = s2 / s2_ref if identified else np.zeros_like(s2)
    from scipy.optimize import minimize

    bounds = [(0.0, None), (0.0, None), (0.0, _ALPHA_MAX), (0.0, None if identified else 0.0)]
    objective = _huber_objective(x1, x2, y, huber_delta, identified)
    best = min(
        (minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                  options={"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-9})
         for start in _profile_starts(x1, x2, y, identified)),
        key=lambda result: result.fun,
    )
    L0, An, alpha, Cn = (float(v) for v in best.x)
    A = An * s1_ref**alpha
    C = Cn / s2_ref if identified else 0.0
    predicted = _law(L0, A, alpha, C, s1, s2)
    per_curve = tuple(_r2(y[curve_id == i], predicted[curve_id == i]) for i in range(len(curves)))
    notes = () if identified else ("no fitted curve anneals (S2 = 0): C fixed at 0, fit a decaying run too",)
    return AnnealingLawParams(
        L0=L0, A=A, alpha=alpha, C=C, decay_factor=decay_factor, r2=_r2(y, predicted), r2_per_curve=per_curve,
        n_points=int(y.size), objective=float(best.fun), annealing_identified=identified, notes=notes,
    )


def compare_curves(predicted: np.ndarray, observed: np.ndarray, start: int = 0) -> dict[str, float]:
    """Errors of a predicted curve against an observed one (NaN = not observed).

    ``final_rel_error``: |pred - obs| / obs at the last observed step; ``mape``: mean
    |pred - obs| / obs over observed steps from index ``start`` on (e.g. past warmup,
    which the law does not model); ``r2`` over the same steps.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    n = min(predicted.size, observed.size)
    predicted, observed = predicted[:n], observed[:n]
    seen = np.flatnonzero(np.isfinite(observed) & np.isfinite(predicted))
    seen = seen[seen >= start]
    if seen.size == 0:
        raise ValueError("no step has both an observed and a predicted loss")
    last = seen[-1]
    rel = np.abs(predicted[seen] - observed[seen]) / observed[seen]
    return {
        "final_step": float(last + 1),
        "final_observed": float(observed[last]),
        "final_predicted": float(predicted[last]),
        "final_rel_error": float(abs(predicted[last] - observed[last]) / observed[last]),
        "mape": float(rel.mean()),
        "r2": _r2(observed[seen], predicted[seen]),
    }


def plot_predictions(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    title: str | None = None,
    skip_fraction: float = 0.05,
) -> Path:
    """Plot predicted (lines) against observed (dots) loss curves; ``curves``: name -> (predicted, observed or None).

    Step i+1 on the x axis is the loss after update i. The y range leaves out the first
    ``skip_fraction`` of steps, where the power law blows up.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown: list[np.ndarray] = []
    for i, (name, (predicted, observed)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        predicted = np.asarray(predicted, dtype=np.float64)
        steps = np.arange(1, predicted.size + 1)
        start = int(skip_fraction * predicted.size)
        ax.plot(steps[start:], predicted[start:], "-", color=color, label=f"{name} (predicted)")
        shown.append(predicted[start:])
        if observed is not None:
            observed = np.asarray(observed, dtype=np.float64)
            seen = np.flatnonzero(np.isfinite(observed))
            seen = seen[seen >= start]
            ax.plot(seen + 1, observed[seen], "o", color=color, markersize=3, alpha=0.6, label=f"{name} (observed)")
            shown.append(observed[seen])
    values = np.concatenate([v[np.isfinite(v)] for v in shown]) if shown else np.array([])
    if values.size:
        low, high = float(values.min()), float(np.percentile(values, 98))
        pad = 0.05 * max(high - low, 1e-6)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curves: annealing-law prediction vs observed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
