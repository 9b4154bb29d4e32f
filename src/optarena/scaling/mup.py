"""muP (maximal update parametrisation) for any PyTorch model, without rewriting it.

Yang, Hu, Babuschkin, Sidor, Liu, Farhi, Ryder, Pachocki, Chen, Gao, "Tensor Programs V:
Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer" (arXiv:2203.03466);
the spectral form is Yang, Simon, Bernstein, "A Spectral Condition for Feature Learning"
(arXiv:2310.17813).

Tune a model at a small **base width**, then train it at any width with the same
hyperparameters. Everything is relative to the base: at the base width every multiplier
is 1, so the base model *is* the model you tuned. For a parameter whose fan-in grows by
``r_in = fan_in / base_fan_in`` and fan-out by ``r_out`` (a dimension that does not change
with width has ratio 1), the multipliers are those of Table 3 of Tensor Programs V, with
the readout written the way the ``mup`` package writes it (a forward multiplier
``1 / r_in`` on the readout's input, weights then treated like vectors)::

                            init std     Adam lr     SGD lr           spectral (Muon) lr
    hidden matrix          r_in^-1/2    1 / r_in    r_out / r_in     sqrt(r_out / r_in) * s_base / s
    input / embedding      1            1           r_out            (as hidden)
    readout (forward /r)   1            1           r_in             (as hidden, times r_in)
    biases, norm gains     untouched    1           r_out            (Adam rule)

where ``s`` is the factor the orthogonalised optimizer already applies for the shape
(Muon's ``scale``; ``"original"`` = sqrt(max(1, rows/cols)) makes the hidden multiplier 1).
Matrix optimizers use the Adam column for their ``matrix=False`` groups.

Weight decay (torch's AdamW decays by ``lr * weight_decay``): matrices with a growing
fan-in get ``weight_decay * r_in ** wd_exponent``. The default exponent 0.5 for Adam-type
optimizers is Fan, Liu, Zhao, Yuan, Gu, "Robust Layerwise Scaling Rules by Proper Weight
Decay Tuning" (arXiv:2510.15262): the top singular value of a matrix scales as
``sqrt(lr / wd) * d ** 0.75``, so with ``lr ~ 1/d`` it is width-invariant for ``wd ~ sqrt(d)``.
``wd_exponent=1`` is the ``mup`` package's default (``lr * wd`` fixed), 0 keeps ``wd``.
SGD and spectral optimizers default to 0: the paper measured AdamW only.
:func:`optarena.diagnostics.spectral.top_singular_values_across_widths` is its diagnostic.

Typical use::

    base = MyModel(width=64)                 # or base=64 with width=..., or base_shapes(...)
    model = MyModel(width=512)
    plan = apply_mup(model, base)            # rescales init, adds the readout multiplier
    opt = create_mup_optimizer("adamw", model, base, lr=3e-3, weight_decay=0.1)

Which dimensions grow is read from a base model's shapes (exact), or, with ``base=int``
and ``width=``, guessed: a dimension that is a multiple of ``width`` is taken to scale
(the vocabulary of embeddings and the outputs of the readout never do). Pass a base model
when a fixed dimension (e.g. an input size) could be a multiple of the width.

Deviations and choices: (1) init is rescaled in place (the model's own init shape is kept;
only its scale changes) instead of re-drawing from a muP initialiser; biases and norm gains
are left as the model made them. (2) The readout multiplier is a forward pre-hook on the
readout module (``readout="multiplier"``), which also covers tied embeddings like
``mup.MuSharedReadout``; ``readout="weights"`` instead puts Table 3's ``1 / r_in`` into the
readout's init std and learning rate (no hook; impossible for tied weights). (3) Embeddings
and the readout keep the weight decay of their group (the registry's grouping gives none to
biases and gains); Fan et al. set it to 0 for all vector-like parameters:
``vector_like_weight_decay=0.0`` does that for embeddings, readout, biases and gains. (4) Attention
logits: a model must apply :func:`mup_attention_scale` itself (``lm`` has ``attn_scale``).

The plan (which dimensions grow, and the multipliers) is :mod:`optarena.scaling.mup_plan`;
the coordinate check that verifies a muP model is :mod:`optarena.scaling.coord_check`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from optarena.optim.muon import MUON_SCALES
from optarena.optim.registry import decay_groups, get_spec
from optarena.scaling.mup_plan import (
    DEFAULT_WD_EXPONENT, FAMILIES, BaseSpec, MupPlan, check_positive_int, mup_plan, optimizer_family,
)

__all__ = [
    "apply_mup",
    "create_mup_optimizer",
    "install_output_multiplier",
    "mup_attention_scale",
    "mup_init_",
    "mup_param_groups",
    "scale_param_groups",
]

INIT_SCHEMES = ("fan_in", "constant")
_FAMILY_OPTIMIZER = {"adam": "adamw", "sgd": "sgd", "spectral": "muon"}


@torch.no_grad()
def mup_init_(
    model: nn.Module,
    plan: MupPlan,
    *,
    base: nn.Module | None = None,
    scheme: str = "fan_in",
    zero_readout: bool = False,
) -> None:
    """Rescale the init of every matrix in place so its std is ``base std * init_std_mult``.

    With ``base`` (a model at the base width, on a real device) the base std is measured
    per tensor. Without it, ``scheme`` says how the model initialised itself:
    ``"fan_in"`` (torch's default layers: std ~ fan_in^-1/2) or ``"constant"`` (one std for
    every width, e.g. GPT-2's 0.02). ``zero_readout`` zeroes an untied readout (the ``mup``
    package's suggestion for the coordinate check). 1-D tensors are left as they are.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {INIT_SCHEMES}, got scheme={scheme!r}")
    base_params = dict(base.named_parameters()) if base is not None else None
    for name, p in model.named_parameters():
        scaling = plan.params.get(name)
        if scaling is None or not scaling.is_matrix:
            continue
        if zero_readout and scaling.role == "readout":
            p.zero_()
            continue
        if base_params is not None:
            reference = base_params.get(name)
            if reference is None:
                raise ValueError(f"the base model has no parameter named {name!r}")
            if reference.is_meta:
                raise ValueError("the base model is on the meta device and holds no values; "
                                 "build it on a real device or pass scheme= instead of base=")
            current = float(p.float().std())
            if current == 0.0:
                continue
            p.mul_(float(reference.float().std()) * scaling.init_std_mult / current)
        elif scheme == "fan_in":
            p.mul_(scaling.init_std_mult * math.sqrt(scaling.fan_in_mult))
        else:
            p.mul_(scaling.init_std_mult)


class _InputScale:
    """Forward pre-hook multiplying a module's first input (picklable, unlike a lambda)."""

    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * self.multiplier, *args[1:])


def install_output_multiplier(model: nn.Module, plan: MupPlan) -> list[torch.utils.hooks.RemovableHandle]:
    """Multiply the readout's input by ``plan.output_mult`` (bias unscaled, as ``mup.MuReadout``).

    Returns the hook handles (``handle.remove()`` undoes it). Fails when the plan scales a
    readout that no module owns (a weight used functionally): scale it in the model instead.
    """
    if plan.unowned_readout:
        raise ValueError(f"no module owns the readout weight(s) {plan.unowned_readout}; multiply the readout input by "
                         f"{plan.output_mult:g} in the model's forward instead")
    modules = dict(model.named_modules())
    return [modules[name].register_forward_pre_hook(_InputScale(mult)) for name, mult in plan.readout_modules.items()]


def apply_mup(
    model: nn.Module,
    base: BaseSpec,
    *,
    width: int | None = None,
    roles: Mapping[str, str] | None = None,
    readout: str = "multiplier",
    init: bool = True,
    init_scheme: str = "fan_in",
    zero_readout: bool = False,
    output_multiplier: bool = True,
) -> MupPlan:
    """Make ``model`` a muP model relative to ``base``: rescale its init, add the readout multiplier.

    Returns the :class:`MupPlan`; pass the same ``base`` to :func:`create_mup_optimizer` or
    :func:`mup_param_groups` for the learning rates. Applying it twice to one model is an error.
    """
    if getattr(model, "_optarena_mup_plan", None) is not None:
        raise ValueError("muP was already applied to this model; build a fresh model to apply it again")
    plan = mup_plan(model, base, width=width, roles=roles, readout=readout)
    if init:
        mup_init_(model, plan, base=base if isinstance(base, nn.Module) else None, scheme=init_scheme,
                  zero_readout=zero_readout)
    if output_multiplier and readout == "multiplier":
        install_output_multiplier(model, plan)
    model._optarena_mup_plan = plan
    return plan


def scale_param_groups(
    groups: Iterable[Mapping[str, Any]],
    plan: MupPlan,
    family: str,
    *,
    lr: float,
    weight_decay: float | None = None,
    wd_exponent: float | None = None,
    vector_like_weight_decay: float | None = None,
    spectral_scale: str = "original",
) -> list[dict[str, Any]]:
    """Split param groups so every parameter gets its muP learning rate and weight decay.

    Each group's own ``lr`` / ``weight_decay`` (else ``lr`` / ``weight_decay``) is multiplied
    per parameter; parameters with equal multipliers stay together and every other key of
    the group is kept. Groups with ``matrix=False`` under a spectral optimizer use the Adam
    rule (Muon runs AdamW on them). LR schedules that scale each group's lr by a common
    factor (all of ``optarena.schedules``, torch's LambdaLR) keep the ratios.
    """
    if family not in FAMILIES:
        raise ValueError(f"optimizer family must be one of {FAMILIES}, got {family!r}")
    exponent = DEFAULT_WD_EXPONENT[family] if wd_exponent is None else float(wd_exponent)
    if not math.isfinite(exponent):
        raise ValueError(f"wd_exponent must be a finite number, got wd_exponent={wd_exponent!r}")
    out: list[dict[str, Any]] = []
    for group in groups:
        rule = "adam" if family == "spectral" and group.get("matrix", True) is False else family
        scale = group.get("scale", spectral_scale)
        scale = scale if scale in MUON_SCALES else "original"
        group_lr = group.get("lr", lr)
        group_wd = group.get("weight_decay", weight_decay)
        buckets: dict[tuple[float, float | None], list[tuple[str, torch.Tensor]]] = {}
        for p in group["params"]:
            name = plan.names_by_id.get(id(p))
            if name is None:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not in the muP plan "
                                 "(frozen, or from another model?)")
            scaling = plan.params[name]
            wd = None
            if group_wd is not None:
                wd = group_wd * scaling.wd_mult(exponent)
                if vector_like_weight_decay is not None and scaling.role != "hidden":
                    wd = vector_like_weight_decay
            key = (round(group_lr * scaling.lr_mult(rule, scale), 15), None if wd is None else round(wd, 15))
            buckets.setdefault(key, []).append((name, p))
        rest = {k: v for k, v in group.items() if k not in ("params", "names", "lr", "weight_decay")}
        for (group_lr_scaled, wd), members in buckets.items():
            new = {**rest, "params": [p for _, p in members], "names": [n for n, _ in members],
                   "lr": group_lr_scaled}
            if wd is not None:
                new["weight_decay"] = wd
            out.append(new)
    return out


def _resolve_optimizer(optimizer: str) -> tuple[Any, str]:
    name = _FAMILY_OPTIMIZER.get(optimizer, optimizer)
    return get_spec(name), optimizer_family(name)


def mup_param_groups(
    model: nn.Module,
    base: BaseSpec,
    optimizer: str = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    width: int | None = None,
    roles: Mapping[str, str] | None = None,
    readout: str = "multiplier",
    wd_exponent: float | None = None,
    vector_like_weight_decay: float | None = None,
    spectral_scale: str | None = None,
    **builder_args: Any,
) -> list[dict[str, Any]]:
    """muP parameter groups for ``optimizer`` (a registered name, or ``"adam"``/``"sgd"``/``"spectral"``).

    The groups are first built the way the registry builds them for that optimizer (e.g.
    Muon's ``matrix`` flags and ``adamw_lr``, passed in ``builder_args``; no weight decay
    on 1-D vectors), then split by :func:`scale_param_groups`. ``lr`` and ``weight_decay``
    are the values tuned at the base width (default: the optimizer's defaults). Any
    ``torch.optim`` optimizer accepts the result when the family matches its update rule.
    """
    spec, family = _resolve_optimizer(optimizer)
    unknown = sorted(set(builder_args) - set(spec.builder_defaults))
    if unknown:
        raise ValueError(f"{spec.name}: unknown group arguments {unknown}; valid: {sorted(spec.builder_defaults)}")
    plan = mup_plan(model, base, width=width, roles=roles, readout=readout)
    builder = spec.build_groups or decay_groups
    groups = builder(plan.partition, {**spec.builder_defaults, **builder_args})
    lr = spec.defaults["lr"] if lr is None else lr
    weight_decay = spec.defaults.get("weight_decay") if weight_decay is None else weight_decay
    return scale_param_groups(
        groups, plan, family, lr=lr, weight_decay=weight_decay, wd_exponent=wd_exponent,
        vector_like_weight_decay=vector_like_weight_decay,
        spectral_scale=spectral_scale or spec.defaults.get("scale", "original"),
    )


def create_mup_optimizer(
    name: str,
    model: nn.Module,
    base: BaseSpec,
    *,
    width: int | None = None,
    param_roles: Mapping[str, str] | None = None,
    readout: str = "multiplier",
    wd_exponent: float | None = None,
    vector_like_weight_decay: float | None = None,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Like :func:`optarena.optim.create_optimizer`, with muP learning rates and weight decay.

    ``hparams`` are the values tuned at the base width; the trainer's ``--parametrization mup``
    calls this in place of ``create_optimizer`` (after :func:`apply_mup`, or for ``lm`` after
    :func:`~optarena.arena.workloads.lm_mup.mup_lm_init_`).
    """
    spec = get_spec(name)
    valid = set(spec.defaults) | set(spec.builder_defaults)
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise ValueError(f"{name}: unknown hyperparameters {unknown}; valid: {sorted(valid)}")
    merged = {**spec.defaults, **spec.builder_defaults, **hparams}
    builder_args = {k: merged.pop(k) for k in spec.builder_defaults}
    groups = mup_param_groups(
        model, base, name, lr=merged["lr"], weight_decay=merged.get("weight_decay"), width=width,
        roles=param_roles, readout=readout, wd_exponent=wd_exponent,
        vector_like_weight_decay=vector_like_weight_decay, spectral_scale=merged.get("scale"), **builder_args,
    )
    return spec.cls(groups, **merged)


def mup_attention_scale(head_dim: int, base_head_dim: int) -> float:
    """muP's attention-logit scale ``sqrt(base_head_dim) / head_dim``: 1/sqrt(d) at the base, then ~1/d.

    (Tensor Programs V, §4; the ``mup`` package writes it as ``8 / d``, i.e. base 64.)
    Only matters when ``head_dim`` grows with width; with a fixed head size and more heads
    the standard 1/sqrt(d) is already width-independent.
    """
    check_positive_int("head_dim", head_dim)
    check_positive_int("base_head_dim", base_head_dim)
    return math.sqrt(base_head_dim) / head_dim
