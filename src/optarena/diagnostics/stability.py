"""Small-scale proxies for large-scale instabilities (Wortsman et al., arXiv:2309.14322).

Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington,
Sohl-Dickstein, Xu, Lee, Gilmer, Kornblith, "Small-scale proxies for large-scale Transformer
training instabilities":

- :func:`lr_sensitivity` — how much the final loss suffers away from the best learning
  rate over a log-spaced sweep: ``mean over lr of (min(loss(lr), l0) - l*)``, with ``l0`` the
  loss at initialisation (a diverged run counts as ``l0``) and ``l*`` the best loss of the sweep.
- Per-run stats that foreshadow the two instabilities they reproduce at small scale:
  attention-logit growth (``max_attn_logit``; fixed by qk-layernorm) and output-logit
  divergence (``logit_rms``; fixed by z-loss), plus gradient and update norms.
  :func:`read_model_stats` reads what a model recorded in its forward (``lm`` with
  ``track_stats=True`` fills ``model.stats``), :func:`grad_norm` and :class:`UpdateNorm`
  measure the rest, and :func:`summarize_stats` reduces a run's per-step records.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

__all__ = ["STABILITY_KEYS", "UpdateNorm", "grad_norm", "lr_sensitivity", "read_model_stats", "summarize_stats"]

STABILITY_KEYS = ("max_attn_logit", "logit_rms", "grad_norm", "update_norm")


def lr_sensitivity(
    sweep: Mapping[float, float] | Iterable[tuple[float, float]],
    initial_loss: float,
    *,
    lr_range: tuple[float, float] | None = None,
) -> float:
    """Wortsman et al.'s LR sensitivity of a sweep of ``(lr, final loss)`` results.

    ``E_lr[min(loss(lr), initial_loss) - l*]`` with ``l* = min`` over the sweep, the
    expectation being the plain mean over the sweep's learning rates (so the sweep should
    be log-spaced, as theirs: [3e-4, 3e-1]). Non-finite losses (divergence) count as
    ``initial_loss``. ``lr_range=(low, high)`` keeps only learning rates inside it.
    Lower is better; 0 means every learning rate reached the same loss.
    """
    if isinstance(initial_loss, bool) or not isinstance(initial_loss, (int, float)) or not math.isfinite(initial_loss):
        raise ValueError(f"initial_loss must be a finite number, got initial_loss={initial_loss!r}")
    points = list(sweep.items() if isinstance(sweep, Mapping) else sweep)
    for lr, _ in points:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rates must be finite numbers > 0, got lr={lr!r}")
    if lr_range is not None:
        low, high = lr_range
        if not (0 < low <= high):
            raise ValueError(f"lr_range must satisfy 0 < low <= high, got lr_range={lr_range!r}")
        points = [(lr, loss) for lr, loss in points if low <= lr <= high]
    if not points:
        raise ValueError("lr_sensitivity needs at least one (lr, loss) point" +
                         (f" inside lr_range={lr_range!r}" if lr_range is not None else ""))
    capped = [min(float(loss), initial_loss) if math.isfinite(float(loss)) else initial_loss for _, loss in points]
    best = min(capped)
    return sum(c - best for c in capped) / len(capped)


def read_model_stats(model: nn.Module) -> dict[str, float]:
    """The stats a model recorded in its last forward (``model.stats``; ``{}`` if it keeps none)."""
    stats = getattr(model, "stats", None)
    return {k: float(v) for k, v in stats.items()} if isinstance(stats, Mapping) else {}


@torch.no_grad()
def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients of ``params`` (parameters without a gradient are skipped)."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


class UpdateNorm:
    """Norm of one optimizer step: ``before()`` copies the parameters, ``after()`` measures the change.

    ``after()`` returns ``{"update_norm": ||theta' - theta||, "relative_update_norm": that / ||theta||}``.
    Costs one copy of the parameters while it runs; call it every k steps on large models.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = [p for p in params]
        self._snapshot: list[torch.Tensor] | None = None

    @torch.no_grad()
    def before(self) -> None:
        self._snapshot = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after(self) -> dict[str, float]:
        if self._snapshot is None:
            raise RuntimeError("call UpdateNorm.before() before the optimizer step, then after()")
        delta = torch.stack([torch.linalg.vector_norm((p.detach() - s).float())
                             for p, s in zip(self.params, self._snapshot)])
        size = torch.stack([torch.linalg.vector_norm(s.float()) for s in self._snapshot])
        self._snapshot = None
        update, norm = float(torch.linalg.vector_norm(delta)), float(torch.linalg.vector_norm(size))
        return {"update_norm": update, "relative_update_norm": update / norm if norm > 0 else math.nan}


def _value(point: Any, key: str) -> float | None:
    value = point.get(key) if isinstance(point, Mapping) else getattr(point, key, None)
    return None if value is None else float(value)


def summarize_stats(points: Sequence[Any], keys: Sequence[str] = STABILITY_KEYS) -> dict[str, dict[str, float]]:
    """Per key: ``max``, ``final``, ``mean`` over finite values and ``count``, from per-step records.

    ``points`` are dicts or objects with attributes (e.g. the store's curve points); keys a
    run never recorded are left out, so the result says what was measured.
    """
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [v for v in (_value(p, key) for p in points) if v is not None and math.isfinite(v)]
        if values:
            out[key] = {"max": max(values), "final": values[-1], "mean": sum(values) / len(values),
                        "count": float(len(values))}
    return out
