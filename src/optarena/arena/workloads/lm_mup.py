"""muP for the ``lm`` workload: the model's overrides and its init, relative to a base width.

Yang et al., "Tensor Programs V" (arXiv:2203.03466): :func:`mup_lm_config` gives the
:class:`~optarena.arena.workloads.lm.LMConfig` overrides (width, readout multiplier, attention
scale) and :func:`mup_lm_init_` rescales the built model's hidden matrices;
:meth:`~optarena.arena.workloads.lm.LMWorkload.build_mup` calls both.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from optarena.arena.workloads.lm import ByteTransformer
from optarena.scaling.mup import mup_init_
from optarena.scaling.mup_plan import MupPlan, base_shapes, check_positive_int, mup_plan

__all__ = ["mup_lm_config", "mup_lm_init_"]


def mup_lm_config(base_width: int, width: int, *, output_mult: float = 1.0,
                  attn_scale: str = "mup") -> dict[str, Any]:
    """``LMConfig`` overrides that make the ``lm`` model at ``width`` a muP model of base ``base_width``.

    ``d_model=width``, ``output_mult = output_mult * base_width / width`` (the readout
    multiplier; ``output_mult`` is the tunable constant of the base model) and ``attn_scale``
    (``"mup"`` = 1/head_dim, as in Tensor Programs V; ``lm`` keeps ``head_dim`` fixed across
    widths, so ``"sqrt"`` transfers too). Build the base model with the same overrides at
    ``base_width``. ``LMConfig`` has one ``init_std`` for every matrix, which cannot express
    the hidden matrices' ``std ~ width^-1/2``: call :func:`mup_lm_init_` on the built model.
    """
    check_positive_int("base_width", base_width)
    check_positive_int("width", width)
    if not (isinstance(output_mult, (int, float)) and math.isfinite(output_mult) and output_mult > 0):
        raise ValueError(f"output_mult must be a finite number > 0, got output_mult={output_mult!r}")
    if attn_scale not in ("sqrt", "mup"):
        raise ValueError(f"attn_scale must be 'sqrt' or 'mup', got attn_scale={attn_scale!r}")
    return {"d_model": width, "output_mult": output_mult * base_width / width, "attn_scale": attn_scale}


def mup_lm_init_(model: nn.Module, base_width: int, *, zero_readout: bool = False,
                 zero_query: bool = False) -> MupPlan:
    """Rescale the hidden matrices of an ``lm`` model built with :func:`mup_lm_config` (in place).

    ``lm`` draws every matrix with one std, so hidden matrices get ``sqrt(base_width / width)``
    of it; embeddings keep it, and the readout keeps it because ``output_mult`` already
    carries the ``1 / width`` factor. The base's shapes come from a meta-device copy, so any
    ``LMConfig`` (SwiGLU widths included) is handled exactly. ``zero_query`` zeroes the query
    projections (the ``mup`` package's advice for attention at init).
    :meth:`~optarena.arena.workloads.lm.LMWorkload.build_mup` does both steps; the optimizer
    then comes from ``create_mup_optimizer(name, task.model, plan, **hparams)``.
    """
    if getattr(model, "_optarena_mup_plan", None) is not None:
        raise ValueError("muP was already applied to this model; build a fresh model to apply it again")
    config = model.config
    check_positive_int("base_width", base_width)
    if base_width % config.head_dim != 0:
        raise ValueError(f"base_width must be a multiple of head_dim={config.head_dim}, got base_width={base_width}")
    with torch.device("meta"):
        base = ByteTransformer(replace(config, d_model=base_width))
    plan = mup_plan(model, base_shapes(base))
    mup_init_(model, plan, scheme="constant", zero_readout=zero_readout)
    if zero_query:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.q.weight.zero_()
    model._optarena_mup_plan = plan
    return plan
