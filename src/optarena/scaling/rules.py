"""Hyperparameter rules from scale: learning rate, batch size and weight decay from N, D and width.

- **Step Law** — Li et al., "Predictable Scale: Part I — Optimal Hyperparameter Scaling Law
  in Large Language Model Pretraining" (arXiv:2503.04715):
  ``lr = 1.79 N^-0.713 D^0.307`` and ``batch = 0.58 D^0.571`` tokens, with ``N`` the
  non-embedding parameters and ``D`` the training tokens.
- **Power scheduler** — Shen et al., "Power Scheduler: A Batch Size and Token Number
  Agnostic Learning Rate Scheduler" (arXiv:2408.13359): under WSD and muP the best lr
  is ``batch * a * tokens^b``, capped at ``max_lr``. Defaults are the PowerLM-3B values
  a = 4, b = -0.51, max_lr = 0.02, with the batch size counted in sequences (the paper's
  fit gave a ≈ 4.6); the constants are for muP models.
- **Weight-decay width rule** — Fan, Liu, Zhao, Yuan, Gu, "Robust Layerwise Scaling Rules
  by Proper Weight Decay Tuning" (arXiv:2510.15262): with muP's ``lr ~ 1/width`` for
  matrix-like parameters, AdamW's ``weight_decay ~ width^0.5`` keeps the top singular
  values width-invariant. The exponent is a parameter
  (1 gives the ``mup`` package's fixed ``lr * wd``, 0 a fixed ``wd``).
- **Our own fit** — ``h = A N^B D^C + E`` over measured optima, the method of Wen, Hall,
  Ma, Liang, "Fantastic Pretraining Optimizers and Where to Find Them" (arXiv:2509.02046):
  :func:`fit_hyperparameter_scaling`.

:func:`suggest` puts them side by side (``optarena suggest``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from optarena.optim.registry import Paper

__all__ = [
    "POWER_SCHEDULER",
    "STEP_LAW",
    "WD_WIDTH_RULE",
    "FANTASTIC_FIT",
    "HyperparameterFit",
    "Suggestion",
    "fit_hyperparameter_scaling",
    "mup_lr_for_width",
    "power_scheduler_lr",
    "step_law_batch_size",
    "step_law_lr",
    "suggest",
    "weight_decay_for_width",
]

STEP_LAW = Paper("Predictable Scale: Part I — Optimal Hyperparameter Scaling Law in Large Language Model "
                 "Pretraining (Step Law)", "2503.04715", 2025)
POWER_SCHEDULER = Paper("Power Scheduler: A Batch Size and Token Number Agnostic Learning Rate Scheduler",
                        "2408.13359", 2024)
WD_WIDTH_RULE = Paper("Robust Layerwise Scaling Rules by Proper Weight Decay Tuning", "2510.15262", 2025)
FANTASTIC_FIT = Paper("Fantastic Pretraining Optimizers and Where to Find Them", "2509.02046", 2025)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return float(value)


def step_law_lr(n_params: float, n_tokens: float) -> float:
    """Step Law's optimal peak learning rate ``1.79 N^-0.713 D^0.307`` (N non-embedding params, D tokens)."""
    n = _check_positive("n_params", n_params)
    d = _check_positive("n_tokens", n_tokens)
    return 1.79 * n ** -0.713 * d ** 0.307


def step_law_batch_size(n_tokens: float) -> float:
    """Step Law's optimal batch size in **tokens**, ``0.58 D^0.571`` (independent of N)."""
    d = _check_positive("n_tokens", n_tokens)
    return 0.58 * d ** 0.571


def power_scheduler_lr(n_tokens: float, batch_size: float, *, a: float = 4.0, b: float = -0.51,
                       max_lr: float = 0.02) -> float:
    """The Power scheduler's lr after ``n_tokens`` tokens: ``min(max_lr, batch_size * a * n_tokens^b)``.

    ``batch_size`` in sequences. At ``n_tokens = D`` this is the paper's optimal WSD lr for a
    D-token run; during training it is the stable-phase lr of the schedule (muP models).
    """
    d = _check_positive("n_tokens", n_tokens)
    beta = _check_positive("batch_size", batch_size)
    _check_positive("a", a)
    _check_positive("max_lr", max_lr)
    if not (isinstance(b, (int, float)) and math.isfinite(b)):
        raise ValueError(f"b must be a finite number, got b={b!r}")
    return min(max_lr, beta * a * d ** b)


def weight_decay_for_width(base_weight_decay: float, base_width: int, width: int, *,
                           exponent: float = 0.5) -> float:
    """Weight decay of matrix-like parameters at ``width``: ``base_weight_decay * (width / base_width)^exponent``.

    Default exponent 0.5 (Fan et al. 2025: ``lambda_2 ~ sqrt(d)`` with muP's ``lr_2 ~ 1/d``
    under AdamW); vector-like parameters take ``lambda_1 = 0`` in that paper.
    """
    if isinstance(base_weight_decay, bool) or not isinstance(base_weight_decay, (int, float)) \
            or not math.isfinite(base_weight_decay) or base_weight_decay < 0:
        raise ValueError(f"base_weight_decay must be a finite number >= 0, got base_weight_decay={base_weight_decay!r}")
    ratio = _check_positive("width", width) / _check_positive("base_width", base_width)
    if not (isinstance(exponent, (int, float)) and math.isfinite(exponent)):
        raise ValueError(f"exponent must be a finite number, got exponent={exponent!r}")
    return base_weight_decay * ratio ** exponent


def mup_lr_for_width(base_lr: float, base_width: int, width: int) -> float:
    """muP's Adam learning rate of hidden (matrix-like) parameters at ``width``: ``base_lr * base_width / width``."""
    return _check_positive("base_lr", base_lr) * _check_positive("base_width", base_width) / _check_positive(
        "width", width)


# --------------------------------------------------------------------------------------
# h = A N^B D^C + E
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HyperparameterFit:
    """A fitted ``h = A N^B D^C + E`` for one hyperparameter ``name``."""

    name: str
    A: float
    B: float
    C: float
    E: float
    n_points: int
    r2: float
    max_relative_error: float

    def predict(self, n_params: float, n_tokens: float) -> float:
        n = _check_positive("n_params", n_params)
        d = _check_positive("n_tokens", n_tokens)
        return self.A * n ** self.B * d ** self.C + self.E

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HyperparameterFit":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def fit_hyperparameter_scaling(
    points: Iterable[tuple[float, float, float]],
    name: str = "h",
    *,
    nonnegative_offset: bool = True,
) -> HyperparameterFit:
    """Least-squares fit of ``h = A N^B D^C + E`` to ``(N, D, h)`` points (scipy ``curve_fit``).

    Follows "Fantastic Pretraining Optimizers" (phase III): each hyperparameter's optimum,
    measured at several (N, D), is fitted and then extrapolated. We fit ``log A`` rather than
    ``A`` (A spans tens of orders of magnitude for N, D ~ 1e9) and start from the log-linear
    fit with ``E = 0``; ``E >= 0`` unless ``nonnegative_offset=False``. Needs 4 or more points
    with positive N, D and h; with N or D held fixed, the matching exponent is not identified.
    """
    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    rows = [tuple(float(v) for v in p) for p in points]
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise ValueError(f"each point must be (N, D, h), got point {i}: {row!r}")
        for label, value in zip(("N", "D", name), row):
            _check_positive(f"{label} of point {i}", value)
    if len(rows) < 4:
        raise ValueError(f"fitting h = A N^B D^C + E needs at least 4 (N, D, {name}) points, got {len(rows)}")
    n, d, h = (np.array(col) for col in zip(*rows))
    log_n, log_d = np.log(n), np.log(d)

    # Initial guess: log h = log A + B log N + C log D (E = 0), by linear least squares.
    design = np.stack([np.ones_like(log_n), log_n, log_d], axis=1)
    (log_a0, b0, c0), *_ = np.linalg.lstsq(design, np.log(h), rcond=None)

    def model(x: Any, log_a: float, b: float, c: float, e: float) -> Any:
        return np.exp(log_a + b * x[0] + c * x[1]) + e

    lower = [-np.inf, -np.inf, -np.inf, 0.0 if nonnegative_offset else -np.inf]
    p0 = [log_a0, b0, c0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            params, _ = curve_fit(model, np.stack([log_n, log_d]), h, p0=p0,
                                  bounds=(lower, [np.inf] * 4), maxfev=20000)
        except RuntimeError:  # no convergence: keep the log-linear fit
            params = np.array(p0)
    pred = model(np.stack([log_n, log_d]), *params)
    residual = float(np.sum((h - pred) ** 2))
    total = float(np.sum((h - h.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else float("nan")
    log_a, b, c, e = (float(v) for v in params)
    return HyperparameterFit(name, math.exp(log_a), b, c, e, len(rows), r2,
                             float(np.max(np.abs(pred - h) / h)))


# --------------------------------------------------------------------------------------
# Side by side
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """One rule's suggestion; ``None`` where the rule says nothing about a hyperparameter."""

    rule: str
    paper: Paper
    lr: float | None = None
    batch_tokens: float | None = None
    batch_sequences: float | None = None
    weight_decay: float | None = None
    note: str = ""


def suggest(
    n_params: float,
    n_tokens: float,
    *,
    seq_len: int = 2048,
    batch_size: float | None = None,
    base_width: int | None = None,
    width: int | None = None,
    base_lr: float | None = None,
    base_weight_decay: float | None = None,
    wd_exponent: float = 0.5,
    power_a: float = 4.0,
    power_b: float = -0.51,
    power_max_lr: float = 0.02,
    fits: Mapping[str, HyperparameterFit] | None = None,
) -> list[Suggestion]:
    """Every rule's lr / batch size / weight decay for ``n_params`` (non-embedding) and ``n_tokens``.

    ``batch_size`` (sequences of ``seq_len`` tokens) feeds the Power scheduler; without it
    Step Law's batch size is used. The width rule appears when ``base_width`` and ``width``
    are given (with ``base_weight_decay``, default 0.1, and ``base_lr`` if known). ``fits``
    maps hyperparameter names (``lr``, ``batch_tokens``, ``batch_sequences``,
    ``weight_decay``) to fits from :func:`fit_hyperparameter_scaling`.
    """
    n = _check_positive("n_params", n_params)
    d = _check_positive("n_tokens", n_tokens)
    seq = _check_positive("seq_len", seq_len)
    out = []
    step_lr, step_batch = step_law_lr(n, d), step_law_batch_size(d)
    out.append(Suggestion("Step Law (Li et al. 2025)", STEP_LAW, lr=step_lr, batch_tokens=step_batch,
                          batch_sequences=step_batch / seq, note="N = non-embedding parameters"))

    if batch_size is None:
        sequences, note = step_batch / seq, "batch from Step Law; muP base lr"
    else:
        sequences, note = _check_positive("batch_size", batch_size), "muP base lr"
    out.append(Suggestion(
        "Power scheduler (Shen et al. 2024)", POWER_SCHEDULER,
        lr=power_scheduler_lr(d, sequences, a=power_a, b=power_b, max_lr=power_max_lr),
        batch_tokens=sequences * seq, batch_sequences=sequences,
        note=f"{note}; a={power_a:g}, b={power_b:g}, max {power_max_lr:g}",
    ))

    if (base_width is None) != (width is None):
        raise ValueError(f"the width rule needs both base_width and width, got base_width={base_width!r}, "
                         f"width={width!r}")
    if base_width is not None:
        wd0 = 0.1 if base_weight_decay is None else base_weight_decay
        out.append(Suggestion(
            "Weight-decay width rule, muP (Fan et al. 2025)", WD_WIDTH_RULE,
            lr=None if base_lr is None else mup_lr_for_width(base_lr, base_width, width),
            weight_decay=weight_decay_for_width(wd0, base_width, width, exponent=wd_exponent),
            note=f"matrix-like params: wd {wd0:g} x ({width}/{base_width})^{wd_exponent:g}"
                 + ("" if base_lr is None else ", lr x base/width") + "; vector-like: wd 0",
        ))

    if fits:
        valid = {"lr", "batch_tokens", "batch_sequences", "weight_decay"}
        unknown = sorted(set(fits) - valid)
        if unknown:
            raise ValueError(f"fits for unknown hyperparameters {unknown}; valid: {sorted(valid)}")
        values = {key: fit.predict(n, d) for key, fit in fits.items()}
        if "batch_tokens" in values and "batch_sequences" not in values:
            values["batch_sequences"] = values["batch_tokens"] / seq
        if "batch_sequences" in values and "batch_tokens" not in values:
            values["batch_tokens"] = values["batch_sequences"] * seq
        r2 = ", ".join(f"{k} R²={f.r2:.3f} ({f.n_points} pts)" for k, f in fits.items())
        out.append(Suggestion("Our fit h = A·N^B·D^C + E (method of Wen et al. 2025)", FANTASTIC_FIT,
                              note=r2, **values))
    return out
