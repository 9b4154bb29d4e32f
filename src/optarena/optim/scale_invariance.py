"""The scale-invariance test and projection of AdamP and SGDP (Heo et al., arXiv:2006.08217).

A tensor with two or more dimensions looks scale-invariant on a view (first match wins:
per output channel ``(rows, -1)``, else the whole layer ``(1, -1)``) when its raw gradient
is nearly orthogonal to it there::

    max |cos(g, θ)| < delta / sqrt(view size)

and the projection then removes the radial component of the update on that view::

    θ̂ = θ / (‖θ‖ + eps);   u <- u - θ̂ <θ̂, u>
"""

from __future__ import annotations

import math

import torch

__all__ = ["invariance_cosines", "project_scale_invariant", "remove_radial", "scale_invariant_view",
           "view_from_cosines"]


def invariance_cosines(g2: torch.Tensor, p2: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """[largest per-row |cos(g, θ)|, whole-layer |cos(g, θ)|] of ``(rows, cols)`` views.

    One set of per-row reductions, accumulated in float32 or wider; the layer's cosine
    comes from their sums. Same arithmetic as ``F.cosine_similarity``: ``<g, θ> /
    (max(‖g‖, eps) max(‖θ‖, eps))``.
    """
    if g2.dtype != torch.float64:
        g2, p2 = g2.float(), p2.float()
    dots, g_sq, p_sq = (g2 * p2).sum(dim=1), (g2 * g2).sum(dim=1), (p2 * p2).sum(dim=1)
    channel = dots.abs() / (g_sq.sqrt().clamp_min(eps) * p_sq.sqrt().clamp_min(eps))
    layer = dots.sum().abs() / (g_sq.sum().sqrt().clamp_min(eps) * p_sq.sum().sqrt().clamp_min(eps))
    return torch.stack([channel.max(), layer])


def view_from_cosines(cosines: torch.Tensor, shape: torch.Size, delta: float) -> tuple[int, int] | None:
    """The test's outcome from :func:`invariance_cosines`: the view to project on, or None."""
    channel, layer = cosines.tolist()
    rows, numel = shape[0], math.prod(shape)
    if channel < delta / math.sqrt(numel // rows):
        return (rows, -1)
    if layer < delta / math.sqrt(numel):
        return (1, -1)
    return None


def scale_invariant_view(param: torch.Tensor, grad: torch.Tensor, delta: float, eps: float) -> tuple[int, int] | None:
    """The view (``(rows, -1)`` per channel, else ``(1, -1)`` for the layer) on which ``param`` looks
    scale-invariant, or None. Tensors with fewer than two dimensions never are."""
    if param.ndim < 2:
        return None
    rows = param.shape[0]
    return view_from_cosines(invariance_cosines(grad.reshape(rows, -1), param.reshape(rows, -1), eps),
                             param.shape, delta)


def remove_radial(param: torch.Tensor, update: torch.Tensor, view: tuple[int, int], eps: float) -> torch.Tensor:
    """u - θ̂ <θ̂, u> on ``view``, with θ̂ = θ / (‖θ‖ + eps)."""
    p_view = param.reshape(view)
    p_unit = p_view / p_view.norm(dim=1, keepdim=True).add_(eps)
    u_view = update.reshape(view)
    radial = (p_unit * u_view).sum(dim=1, keepdim=True)
    return (u_view - p_unit * radial).view_as(update)


def project_scale_invariant(
    param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[torch.Tensor, float]:
    """Remove the radial component of ``update`` if ``param`` looks scale-invariant.

    Returns the (possibly new) update and the weight-decay ratio to use. Tensors with fewer
    than two dimensions are returned unchanged with ratio 1.
    """
    view = scale_invariant_view(param, grad, delta, eps)
    if view is None:
        return update, 1.0
    return remove_radial(param, update, view, eps), wd_ratio
