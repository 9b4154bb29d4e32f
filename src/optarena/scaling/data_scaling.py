"""Data scaling of the final loss: ``L(D) = alpha * D^-B + beta`` and the data-equivalent speedup.

Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them" (arXiv:2509.02046): fit a
baseline's final loss over the training budgets ``D``, then invert the fit for another
optimizer's loss ``L`` at budget ``D``: ``D_eff = ((L - beta) / alpha)^(-1/B)`` is the budget
the baseline would need, and ``D_eff / D`` the speedup.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = ["MIN_EXPONENT", "DataEquivalentSpeedup", "ScalingFit", "data_equivalent_speedups", "fit_data_scaling"]

MIN_EXPONENT = 0.01  # below this the L(D) fit has no identifiable floor (see fit_data_scaling)


def _power_law(d: np.ndarray, alpha: float, exponent: float, beta: float) -> np.ndarray:
    return alpha * np.power(d, -exponent) + beta


@dataclass
class ScalingFit:
    """``L(D) = alpha * D^-exponent + beta`` fitted to a baseline's final losses over budgets."""

    alpha: float
    exponent: float
    beta: float
    budgets: list[float]
    losses: list[float]

    def loss(self, budget: float) -> float:
        return float(_power_law(np.asarray(budget, dtype=float), self.alpha, self.exponent, self.beta))

    def effective_data(self, loss: float) -> float:
        """``D_eff = ((L - beta) / alpha)^(-1/exponent)``: the budget the baseline needs to reach ``loss``.

        ``inf`` at or below the fitted floor ``beta`` (the baseline never gets there).
        """
        if loss <= self.beta:
            return math.inf
        return float(((loss - self.beta) / self.alpha) ** (-1.0 / self.exponent))

    def speedup(self, loss: float, budget: float) -> float:
        """``D_eff / D``: how many times more data the baseline needs to match ``loss`` reached at ``budget``."""
        return self.effective_data(loss) / budget


def fit_data_scaling(budgets: Sequence[float], losses: Sequence[float]) -> ScalingFit:
    """Fit ``L(D) = alpha * D^-B + beta`` as the Fantastic paper's ``speedup_estimation.py`` does.

    ``scipy.optimize.curve_fit`` from ``p0 = [L_first - L_last, 0.5, L_last]`` (budgets sorted
    ascending). Raises ``ValueError`` saying why when there are fewer than 3 distinct budgets,
    non-finite losses, the fit does not give a decreasing law (alpha > 0, B > 0) to invert, or
    the fit is degenerate (B < 0.01, or beta more than 10 loss spreads below the lowest loss:
    losses that keep falling as fast at every budget identify no floor). The last check is ours;
    the Fantastic code trusts every fit.
    """
    pairs = sorted(zip((float(b) for b in budgets), (float(x) for x in losses)))
    if len(pairs) != len(budgets) or len(budgets) != len(losses):
        raise ValueError(f"need one loss per budget, got {len(budgets)} budgets and {len(losses)} losses")
    d = np.array([b for b, _ in pairs])
    y = np.array([x for _, x in pairs])
    if len(np.unique(d)) < 3:
        raise ValueError(f"the fit L(D) = alpha*D^-B + beta has 3 parameters and needs at least 3 distinct budgets, "
                         f"got {len(np.unique(d))} ({sorted(set(d.tolist()))})")
    if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(np.isfinite(y))):
        raise ValueError(f"budgets must be > 0 and losses finite, got budgets={d.tolist()}, losses={y.tolist()}")
    p0 = [y[0] - y[-1], 0.5, y[-1]]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_power_law, d, y, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"the fit L(D) = alpha*D^-B + beta did not converge on losses {y.tolist()}: {err}") from None
    alpha, exponent, beta = (float(p) for p in params)
    if not (math.isfinite(alpha) and math.isfinite(exponent) and math.isfinite(beta) and alpha > 0 and exponent > 0):
        raise ValueError(f"the fitted law is not decreasing in D (alpha={alpha:.4g}, B={exponent:.4g}), so it cannot "
                         f"be inverted; losses over budgets {d.tolist()} were {y.tolist()}")
    spread = float(y.max() - y.min())
    if exponent < MIN_EXPONENT or beta < y.min() - 10 * spread:
        # Losses that do not flatten with the budget drive the fit to B -> 0, alpha -> inf, beta -> -inf:
        # a logarithm in disguise whose floor (and hence any D_eff beyond the data) is not identified.
        raise ValueError(f"the losses {[round(v, 4) for v in y.tolist()]} do not flatten with the budget, so the "
                         f"fit is degenerate (B={exponent:.3g}, beta={beta:.4g}); train longer budgets before "
                         f"reading a data-equivalent speedup")
    return ScalingFit(alpha, exponent, beta, d.tolist(), y.tolist())


@dataclass
class DataEquivalentSpeedup:
    """Per (workload, scale): the baseline's L(D) fit and each optimizer's D_eff / D at each budget."""

    workload: str
    scale: str
    baseline: str
    budgets: list[int]  # steps, ascending (the baseline's finished budgets)
    unit: int  # D = steps / unit (the smallest budget); the speedup does not depend on the unit
    fit: ScalingFit | None
    reason: str | None  # why there is no fit
    losses: dict[str, dict[int, float]] = field(default_factory=dict)  # optimizer -> steps -> mean final loss
    speedups: dict[str, dict[int, float]] = field(default_factory=dict)  # optimizer -> steps -> D_eff / D


def data_equivalent_speedups(losses: Mapping[tuple[str, str], Mapping[str, Mapping[int, float]]],
                             baseline: str = "adamw") -> list[DataEquivalentSpeedup]:
    """The Fantastic data-equivalent speedup (arXiv:2509.02046) for every (workload, scale) of ``losses``.

    ``losses[(workload, scale)][optimizer][steps]`` is the final loss (mean over seeds) of the
    configuration tuned at that budget. With fewer than 3 budgets of ``baseline``, or a fit that
    cannot be inverted, ``fit`` is None and ``reason`` says why; no speedup is guessed.
    """
    out = []
    for (workload, scale), per_optimizer in losses.items():
        table = {name: dict(per_budget) for name, per_budget in per_optimizer.items() if per_budget}
        base = table.get(baseline, {})
        budgets = sorted(base)
        every = sorted({b for per_budget in per_optimizer.values() for b in per_budget})
        unit = budgets[0] if budgets else (every[0] if every else 1)
        fit, reason = None, None
        if not budgets:
            reason = f"no finished {baseline} run"
        else:
            try:
                fit = fit_data_scaling([b / unit for b in budgets], [base[b] for b in budgets])
            except ValueError as err:
                reason = f"{len(budgets)} budget(s) of {baseline} ({', '.join(map(str, budgets))} steps): {err}"
        speedups: dict[str, dict[int, float]] = {}
        if fit is not None:
            for name, per_budget in table.items():
                speedups[name] = {b: fit.speedup(loss, b / unit) for b, loss in per_budget.items()}
        out.append(DataEquivalentSpeedup(workload, scale, baseline, budgets, unit, fit, reason, table, speedups))
    return out
