"""Spectral diagnostics: the top singular value of every matrix, and how it changes with width.

Fan, Liu, Zhao, Yuan, Gu, "Robust Layerwise Scaling Rules by Proper Weight Decay Tuning"
(arXiv:2510.15262): under AdamW a matrix's singular values scale as ``sqrt(lr / wd)``,
and its top one as ``sqrt(lr / wd) * d^0.75``. Their check that a width-scaling rule works
is that the top singular values of corresponding matrices match across widths after training;
:func:`top_singular_values_across_widths` tabulates them and :func:`width_spread` reduces each
parameter to max / min over widths (1 = matched).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

__all__ = ["top_singular_value", "top_singular_values", "top_singular_values_across_widths", "width_spread"]


@torch.no_grad()
def top_singular_value(tensor: torch.Tensor) -> float:
    """Largest singular value of ``tensor`` viewed as ``(rows, -1)`` (conv kernels flattened)."""
    if tensor.ndim < 2:
        raise ValueError(f"a singular value needs a tensor with 2 or more dimensions, got shape {tuple(tensor.shape)}")
    matrix = tensor.detach().reshape(tensor.shape[0], -1)
    matrix = matrix.double() if matrix.dtype == torch.float64 else matrix.float()
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def top_singular_values(model: nn.Module | Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """``{name: top singular value}`` for every parameter with 2 or more dimensions."""
    named = model.named_parameters() if isinstance(model, nn.Module) else model
    return {name: top_singular_value(p) for name, p in named if p.ndim >= 2}


def top_singular_values_across_widths(models: Mapping[int, nn.Module]) -> list[dict[str, Any]]:
    """Rows ``{name, width, sigma_top, ratio_to_base}`` for parameters present at every width.

    ``models`` maps width -> model (trained with the rule under test); ``ratio_to_base``
    divides by the smallest width's value.
    """
    if not models:
        raise ValueError("models must map at least one width to a model")
    values = {width: top_singular_values(model) for width, model in sorted(models.items())}
    widths = list(values)
    common = [n for n in values[widths[0]] if all(n in values[w] for w in widths)]
    rows = []
    for name in common:
        base = values[widths[0]][name]
        for width in widths:
            sigma = values[width][name]
            rows.append({"name": name, "width": width, "sigma_top": sigma,
                         "ratio_to_base": sigma / base if base > 0 else math.nan})
    return rows


def width_spread(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """``{name: max / min of sigma_top over widths}`` from :func:`top_singular_values_across_widths`."""
    by_name: dict[str, list[float]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(float(row["sigma_top"]))
    return {name: (max(v) / min(v) if min(v) > 0 else math.inf) for name, v in by_name.items()}
