"""SCALE's fused matrix steps: the RMS-normalised update in C for large CPU float32 matrices.

A row's RMS is summed while the previous row is updated, and the row is updated from the
cache in the next sweep (with the readout's momentum in the same pass), so each row is read
from memory once; an embedding takes two passes, since its column RMS needs every row first.
The update multiplies by 1 / RMS where the eager path divides (an ulp apart).
"""

from __future__ import annotations

import torch

from optarena.optim.kernels.compiled import fusable
from optarena.optim.kernels.native import function, usable

__all__ = ["col_rms_step", "row_rms_step", "takes"]

_ROW_RMS, _COL_RMS = function("row_rms"), function("col_rms")


def takes(*tensors: torch.Tensor) -> bool:
    """Whether the C kernels take these tensors (large, CPU float32, contiguous, kernels available)."""
    return fusable(*tensors) and usable(*tensors)


def row_rms_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, weight: float, lr: float,
                 decay: float) -> None:
    """θ <- θ (1 - decay) - lr d / max(rms_row(d), 1e-8) on the ``(shape[0], -1)`` view, d = g, or with
    ``buf`` the momentum ``buf <- lerp(buf, g, weight)`` updated in the same pass."""
    _ROW_RMS(p, g, buf, weight=weight, lr=lr, decay=decay)


def col_rms_step(p: torch.Tensor, g: torch.Tensor, *, lr: float, decay: float) -> None:
    """θ <- θ (1 - decay) - lr g / max(rms_col(g), 1e-8), RMS over ``dim=0`` of the ``(shape[0], -1)`` view."""
    cols = p.numel() // p.shape[0]
    _COL_RMS(p, g, lr=lr, decay=decay, colsq=torch.empty(cols, dtype=torch.float64),
             colf=torch.empty(cols, dtype=torch.float32))
