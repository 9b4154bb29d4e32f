"""Diagnostics: instability proxies (LR sensitivity, logit and norm stats) and spectral checks."""

from optarena.diagnostics.spectral import (
    top_singular_value,
    top_singular_values,
    top_singular_values_across_widths,
    width_spread,
)
from optarena.diagnostics.stability import (
    STABILITY_KEYS,
    UpdateNorm,
    grad_norm,
    lr_sensitivity,
    read_model_stats,
    summarize_stats,
)

__all__ = [
    "STABILITY_KEYS", "UpdateNorm", "grad_norm", "lr_sensitivity", "read_model_stats", "summarize_stats",
    "top_singular_value", "top_singular_values", "top_singular_values_across_widths", "width_spread",
]
