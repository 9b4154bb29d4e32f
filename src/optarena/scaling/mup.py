"""muP (maximal update parametrisation) for any PyTorch model, without rewriting it.

Yang, Hu, Babuschkin, Sidor, Liu, Farhi, Ryder, Pachocki, Chen, Gao, "Tensor Programs V:
Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer" (arXiv:2203.03466);
the spectral form is Yang, Simon, Bernstein, "A Spectral Condition for Feature Learning"
(arXiv:2310.17813). ALGORITHMS.md §5.1 and §5.3.

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
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from optarena.optim.muon import MUON_SCALES, muon_scale
from optarena.optim.partition import ParameterPartition, partition_parameters
from optarena.optim.registry import create_optimizer, decay_groups, get_spec

__all__ = [
    "FAMILIES",
    "CoordCheckResult",
    "CoordRecord",
    "MupPlan",
    "ParamScaling",
    "apply_mup",
    "base_shapes",
    "coord_check",
    "create_mup_optimizer",
    "install_output_multiplier",
    "mup_attention_scale",
    "mup_init_",
    "mup_lm_config",
    "mup_lm_init_",
    "mup_param_groups",
    "mup_plan",
    "optimizer_family",
    "plot_coord_check",
    "scale_param_groups",
]

FAMILIES = ("adam", "sgd", "spectral")
READOUT_MODES = ("multiplier", "weights")
INIT_SCHEMES = ("fan_in", "constant")
_FAMILY_OPTIMIZER = {"adam": "adamw", "sgd": "sgd", "spectral": "muon"}
_DEFAULT_WD_EXPONENT = {"adam": 0.5, "sgd": 0.0, "spectral": 0.0}

BaseSpec = Any  # nn.Module | Mapping[str, Sequence[int]] | int | MupPlan


# --------------------------------------------------------------------------------------
# The plan: per-parameter width ratios, and the multipliers they imply
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamScaling:
    """Width ratios of one parameter and the muP multipliers they give.

    ``fan_in_mult`` / ``fan_out_mult`` are current / base sizes (1 for a dimension that does
    not scale). For ``nn.Linear``-like weights fan-out is dim 0 and fan-in the rest; for
    embeddings (a lookup) fan-in is dim 0 (the vocabulary) and fan-out dim 1.
    ``forward_mult`` is the multiplier applied to the parameter in the forward pass (the
    readout's ``1 / r_in`` under ``readout="multiplier"``, else 1).
    """

    name: str
    role: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    fan_in_mult: float
    fan_out_mult: float
    forward_mult: float = 1.0

    @property
    def kind(self) -> str:
        """muP's classes: two growing dims = matrix-like, one = vector-like, none = scalar-like."""
        growing = sum(m != 1.0 for m in (self.fan_in_mult, self.fan_out_mult))
        return ("scalar-like", "vector-like", "matrix-like")[growing]

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2

    @property
    def init_std_mult(self) -> float:
        """Init std relative to the base width's std of the same tensor (1-D tensors: 1)."""
        if not self.is_matrix:
            return 1.0
        effective = self.fan_in_mult ** -1.0 if self.role == "readout" else self.fan_in_mult ** -0.5
        return effective / self.forward_mult

    def lr_mult(self, family: str, spectral_scale: str = "original") -> float:
        """Learning-rate multiplier for an optimizer of ``family`` (see the module table)."""
        r_in, r_out, m = self.fan_in_mult, self.fan_out_mult, self.forward_mult
        if family == "adam":
            return (1.0 / r_in if self.is_matrix else 1.0) / m
        if family == "sgd":
            return (r_out / r_in) / (m * m)
        if family == "spectral":
            if not self.is_matrix:
                return 1.0
            shape_factor = muon_scale(self.base_shape, spectral_scale) / muon_scale(self.shape, spectral_scale)
            return math.sqrt(r_out / r_in) * shape_factor / m
        raise ValueError(f"optimizer family must be one of {FAMILIES}, got {family!r}")

    def wd_mult(self, exponent: float) -> float:
        """Weight-decay multiplier: ``r_in ** exponent`` for matrices whose fan-in grows, else 1."""
        if self.is_matrix and self.role != "readout" and self.forward_mult == 1.0:
            return self.fan_in_mult ** exponent
        return 1.0


@dataclass
class MupPlan:
    """Per-parameter :class:`ParamScaling` for one model, and where its readout multiplier goes."""

    params: dict[str, ParamScaling]
    readout: str
    readout_modules: dict[str, float]  # module name -> multiplier on its input (empty for "weights")
    partition: ParameterPartition = field(repr=False)
    names_by_id: dict[int, str] = field(repr=False, default_factory=dict)
    unowned_readout: list[str] = field(default_factory=list)  # readout weights no module owns

    def base_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: base shape}``: pass it as ``base=`` for another call on the same model."""
        return {name: s.base_shape for name, s in self.params.items()}

    @property
    def output_mult(self) -> float:
        """The readout multiplier ``base_fan_in / fan_in`` (1.0 without a readout or with ``"weights"``)."""
        return next(iter(self.readout_modules.values()), 1.0)

    def rows(self, family: str = "adam", wd_exponent: float | None = None,
             spectral_scale: str = "original") -> list[dict[str, Any]]:
        """One dict per parameter: name, role, kind, shapes and the multipliers for ``family``."""
        exponent = _DEFAULT_WD_EXPONENT[family] if wd_exponent is None else wd_exponent
        return [
            {"name": s.name, "role": s.role, "kind": s.kind, "shape": s.shape, "base_shape": s.base_shape,
             "init_std_mult": s.init_std_mult, "lr_mult": s.lr_mult(family, spectral_scale),
             "wd_mult": s.wd_mult(exponent), "forward_mult": s.forward_mult}
            for s in self.params.values()
        ]


def optimizer_family(optimizer: str) -> str:
    """muP family of a registered optimizer name (or a family name, returned as is).

    Registry family ``"matrix"`` -> ``"spectral"``; names containing ``sgd`` and zeroth-order
    methods -> ``"sgd"``; every other (element-wise adaptive) method -> ``"adam"``.
    """
    if optimizer in FAMILIES:
        return optimizer
    spec = get_spec(optimizer)
    if spec.family == "matrix":
        return "spectral"
    if "sgd" in spec.name or spec.family == "zeroth-order":
        return "sgd"
    return "adam"


def base_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every parameter: a base that can be saved and passed as ``base=``.

    Building the base on the meta device costs no memory:
    ``with torch.device("meta"): shapes = base_shapes(MyModel(width=64))``.
    """
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")


def _tied_readout_modules(model: nn.Module, partition: ParameterPartition) -> dict[str, nn.Module]:
    """Linear-like modules whose weight is an embedding table (tied input/output embeddings)."""
    embedding_ids = {id(p) for _, p in partition.embedding}
    return {
        name: m for name, m in model.named_modules()
        if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        and isinstance(getattr(m, "weight", None), torch.Tensor) and id(m.weight) in embedding_ids
    }


def _guess_base_shape(shape: tuple[int, ...], role: str, base_width: int, width: int,
                      fixed_first_dim: bool) -> tuple[int, ...]:
    """Base shape under the rule "a dimension that is a multiple of ``width`` scales with it"."""

    def scaled(n: int) -> int:
        return n // width * base_width if n % width == 0 else n

    dims = list(shape)
    if len(dims) >= 2:
        if role in ("embedding", "readout"):  # dim 0 is the vocabulary / the output size
            dims[1] = scaled(dims[1])
        else:
            dims[0], dims[1] = scaled(dims[0]), scaled(dims[1])
    elif len(dims) == 1 and not fixed_first_dim:
        dims[0] = scaled(dims[0])
    return tuple(dims)


def _fan_mults(shape: tuple[int, ...], base: tuple[int, ...], role: str) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return 1.0, shape[0] / base[0]
    rest, base_rest = math.prod(shape[1:]), math.prod(base[1:])
    if role == "embedding":
        return shape[0] / base[0], rest / base_rest
    return rest / base_rest, shape[0] / base[0]


def mup_plan(
    model: nn.Module,
    base: BaseSpec,
    *,
    width: int | None = None,
    roles: Mapping[str, str] | None = None,
    readout: str = "multiplier",
) -> MupPlan:
    """Width ratios and multipliers for every trainable parameter of ``model``.

    ``base`` is a model built at the base width (its shapes are compared with ``model``'s,
    name by name), a ``{name: shape}`` mapping (:func:`base_shapes`), a :class:`MupPlan` of
    the same model (e.g. from :func:`mup_lm_init_`), or the base width as an ``int``
    together with ``width=`` (the width of ``model``). ``roles`` overrides the
    hidden / embedding / readout / vector split as in :func:`partition_parameters`.
    """
    if readout not in READOUT_MODES:
        raise ValueError(f"readout must be one of {READOUT_MODES}, got readout={readout!r}")
    partition = partition_parameters(model, roles=roles)
    tied = _tied_readout_modules(model, partition)
    readout_prefixes = {n.rsplit(".", 1)[0] if "." in n else "" for n, _ in partition.readout} | set(tied)

    if isinstance(base, bool):
        raise ValueError(f"base must be a model, a {{name: shape}} mapping or an int width, got base={base!r}")
    if isinstance(base, int):
        _check_positive_int("base", base)
        if width is None:
            raise ValueError(f"base={base} is a width, so pass the model's width too (width=...)")
        _check_positive_int("width", width)
        shapes = None
    elif isinstance(base, nn.Module):
        shapes = base_shapes(base)
    elif isinstance(base, MupPlan):
        shapes = base.base_shapes()
    elif isinstance(base, Mapping):
        shapes = {k: tuple(int(d) for d in v) for k, v in base.items()}
    else:
        raise ValueError(f"base must be a model, a {{name: shape}} mapping or an int width, got {type(base).__name__}")

    params: dict[str, ParamScaling] = {}
    names_by_id: dict[int, str] = {}
    for role in ("hidden", "embedding", "readout", "vector"):
        for name, p in getattr(partition, role):
            shape = tuple(p.shape)
            if shapes is None:
                prefix = name.rsplit(".", 1)[0] if "." in name else ""
                base_shape = _guess_base_shape(shape, role, base, width, fixed_first_dim=prefix in readout_prefixes)
            else:
                if name not in shapes:
                    raise ValueError(f"the base has no parameter named {name!r}; base parameters: "
                                     f"{', '.join(sorted(shapes)) or '(none)'}")
                base_shape = shapes[name]
                if len(base_shape) != len(shape):
                    raise ValueError(f"parameter {name!r} has shape {shape} but {base_shape} in the base")
            fan_in, fan_out = _fan_mults(shape, base_shape, role)
            params[name] = ParamScaling(name, role, shape, base_shape, fan_in, fan_out)
            names_by_id[id(p)] = name

    readout_modules: dict[str, float] = {}
    unowned: list[str] = []
    if readout == "multiplier":
        owners = {id(m.weight): n for n, m in model.named_modules()
                  if isinstance(getattr(m, "weight", None), torch.Tensor)}
        for name, p in partition.readout:
            scaling = params[name]
            if scaling.is_matrix:
                multiplier = 1.0 / scaling.fan_in_mult
                params[name] = replace(scaling, forward_mult=multiplier)
                if id(p) in owners:
                    readout_modules[owners[id(p)]] = multiplier
                else:
                    unowned.append(name)
        for module_name, module in tied.items():  # the shared table is the embedding's; dim 1 is the width
            readout_modules[module_name] = 1.0 / params[names_by_id[id(module.weight)]].fan_out_mult
    elif tied:
        raise ValueError(f"readout='weights' cannot scale a readout tied to an embedding ({', '.join(tied)}); "
                         "use readout='multiplier'")
    return MupPlan(params, readout, readout_modules, partition, names_by_id, unowned)


# --------------------------------------------------------------------------------------
# Applying it: init, the readout multiplier, parameter groups, the optimizer
# --------------------------------------------------------------------------------------


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
    exponent = _DEFAULT_WD_EXPONENT[family] if wd_exponent is None else float(wd_exponent)
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
        rest = {k: v for k, v in group.items() if k not in ("params", "param_names", "lr", "weight_decay")}
        for (group_lr_scaled, wd), members in buckets.items():
            new = {**rest, "params": [p for _, p in members], "param_names": [n for n, _ in members],
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
    calls this in place of ``create_optimizer`` (after :func:`apply_mup` or :func:`mup_lm_init_`).
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
    _check_positive_int("head_dim", head_dim)
    _check_positive_int("base_head_dim", base_head_dim)
    return math.sqrt(base_head_dim) / head_dim


# --------------------------------------------------------------------------------------
# The ``lm`` workload
# --------------------------------------------------------------------------------------


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
    _check_positive_int("base_width", base_width)
    _check_positive_int("width", width)
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
    projections (the ``mup`` package's advice for attention at init). The trainer's muP path::

        task = workload.build(scale, seed, **mup_lm_config(base_width, width))
        plan = mup_lm_init_(task.model, base_width)
        optimizer = create_mup_optimizer(name, task.model, plan, **hparams)
    """
    from optarena.arena.workloads.lm import ByteTransformer

    if getattr(model, "_optarena_mup_plan", None) is not None:
        raise ValueError("muP was already applied to this model; build a fresh model to apply it again")
    config = model.config
    _check_positive_int("base_width", base_width)
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


# --------------------------------------------------------------------------------------
# Coordinate check
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordRecord:
    """Mean |output| of one module, at one width, after ``step`` optimizer updates, for one seed."""

    width: int
    step: int
    module: str
    l1: float
    seed: int


@dataclass
class CoordCheckResult:
    """The tidy table of a coordinate check and summaries of it."""

    records: list[CoordRecord]
    parametrization: str
    optimizer: str
    lr: float

    @property
    def widths(self) -> list[int]:
        return sorted({r.width for r in self.records})

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(r.module for r in self.records))

    def mean_l1(self) -> dict[tuple[str, int, int], float]:
        """``{(module, step, width): mean over seeds}``."""
        sums: dict[tuple[str, int, int], list[float]] = {}
        for r in self.records:
            sums.setdefault((r.module, r.step, r.width), []).append(r.l1)
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def slopes(self) -> dict[tuple[str, int], float]:
        """Least-squares slope of log(mean |x|) against log(width), per (module, step).

        Near 0 means the coordinate size does not change with width (what muP promises);
        NaN where a value is 0 or not finite.
        """
        table = self.mean_l1()
        widths = self.widths
        xs = [math.log(w) for w in widths]
        x_mean = sum(xs) / len(xs)
        denom = sum((x - x_mean) ** 2 for x in xs)
        out = {}
        for module in self.modules:
            for step in self.steps:
                ys = [table.get((module, step, w), float("nan")) for w in widths]
                if denom == 0 or not all(math.isfinite(y) and y > 0 for y in ys):
                    out[(module, step)] = float("nan")
                    continue
                logs = [math.log(y) for y in ys]
                y_mean = sum(logs) / len(logs)
                out[(module, step)] = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, logs)) / denom
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"parametrization": self.parametrization, "width": r.width, "step": r.step,
                 "module": r.module, "l1": r.l1, "seed": r.seed} for r in self.records]


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, targets = batch
    out = model(inputs)
    if targets.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1))
    return nn.functional.mse_loss(out.float(), targets.float())


def coord_check(
    build_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    batches: Sequence[Any] | Callable[[int], Any],
    *,
    steps: int = 3,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    parametrization: str = "mup",
    base_width: int | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    seeds: Sequence[int] = (0,),
    apply_multipliers: bool = True,
    zero_readout: bool = False,
    include: str | None = None,
    **hparams: Any,
) -> CoordCheckResult:
    """Record the mean |output| of every module over ``steps`` training steps at each width.

    The ``mup`` package's check (``mup.coord_check.get_coord_data``), ALGORITHMS.md §5.1:
    under muP each module's curve stays flat across widths; under the standard
    parametrisation activations grow with width after the first update. Use a large ``lr``.

    ``build_model(width)`` makes a fresh model (called under ``torch.manual_seed(seed)``);
    ``batches`` is a sequence of at least ``steps`` batches or ``step -> batch``, the same
    for every width; ``loss_fn(model, batch)`` defaults to cross-entropy (integer targets)
    or MSE on ``(inputs, targets)``. Step ``t`` holds the forward pass after ``t`` updates
    (``t = 0`` is the init). With ``parametrization="mup"`` the base is
    ``build_model(base_width)`` (default: the smallest width), :func:`apply_mup` is applied
    unless ``apply_multipliers=False`` (for models that build their own muP, like ``lm``
    with :func:`mup_lm_config`), and the optimizer comes from :func:`create_mup_optimizer`;
    ``zero_readout`` zeroes the readout at init (the network output then starts at 0
    instead of shrinking as width^-1/2, which otherwise tilts the output's curve early on).
    ``include`` is a regular expression on module names (root = ``"<model>"``).
    """
    if parametrization not in ("mup", "standard"):
        raise ValueError(f"parametrization must be 'mup' or 'standard', got {parametrization!r}")
    if not widths:
        raise ValueError("widths must name at least one width")
    for w in widths:
        _check_positive_int("width", w)
    _check_positive_int("steps", steps)
    if not callable(batches) and len(batches) < steps:
        raise ValueError(f"got {len(batches)} batches for steps={steps}; pass at least one batch per step")
    pattern = re.compile(include) if include else None
    loss_fn = loss_fn or _default_loss
    base_width = min(widths) if base_width is None else base_width
    records: list[CoordRecord] = []
    for seed in seeds:
        base = None
        if parametrization == "mup":
            torch.manual_seed(seed)
            base = build_model(base_width)
        for width in widths:
            torch.manual_seed(seed)
            model = build_model(width)
            if parametrization == "mup":
                if apply_multipliers:
                    apply_mup(model, base, zero_readout=zero_readout)
                opt = create_mup_optimizer(optimizer, model, base, lr=lr, **hparams)
            else:
                opt = create_optimizer(optimizer, model, lr=lr, **hparams)
            seen: dict[str, list[float]] = {}

            def record(name: str) -> Callable[..., None]:
                def hook(module: nn.Module, args: Any, output: Any) -> None:
                    tensor = _first_tensor(output)
                    if tensor is not None and tensor.is_floating_point():
                        seen.setdefault(name, []).append(float(tensor.detach().abs().float().mean()))
                return hook

            handles = []
            for name, module in model.named_modules():
                label = name or "<model>"
                if pattern is None or pattern.search(label):
                    handles.append(module.register_forward_hook(record(label)))
            model.train()
            try:
                for step in range(steps):
                    seen.clear()
                    batch = batches(step) if callable(batches) else batches[step]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model, batch)
                    for name, values in seen.items():
                        records.append(CoordRecord(width, step, name, sum(values) / len(values), seed))
                    loss.backward()
                    opt.step()
            finally:
                for handle in handles:
                    handle.remove()
    return CoordCheckResult(records, parametrization, optimizer, lr)


def plot_coord_check(
    results: CoordCheckResult | Sequence[CoordCheckResult],
    path: str,
    *,
    title: str | None = None,
    max_legend: int = 16,
) -> str:
    """Write a PNG: one row per result, one panel per step, mean |output| against width (log-log)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, CoordCheckResult) else list(results)
    if not results:
        raise ValueError("nothing to plot: pass at least one CoordCheckResult")
    steps = sorted({s for r in results for s in r.steps})
    fig, axes = plt.subplots(len(results), len(steps), figsize=(3.2 * len(steps) + 2.5, 3.0 * len(results)),
                             squeeze=False, sharex=True)
    modules = list(dict.fromkeys(m for r in results for m in r.modules))
    colors = plt.cm.viridis([i / max(1, len(modules) - 1) for i in range(len(modules))])
    for row, result in enumerate(results):
        table = result.mean_l1()
        for col, step in enumerate(steps):
            ax = axes[row][col]
            for module, color in zip(modules, colors):
                points = [(w, table[(module, step, w)]) for w in result.widths if (module, step, w) in table]
                if points:
                    ax.plot(*zip(*points), marker=".", color=color, linewidth=1, label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{result.parametrization}, step {step}", fontsize=9)
            if col == 0:
                ax.set_ylabel("mean |output|")
            if row == len(results) - 1:
                ax.set_xlabel("width")
    if len(modules) <= max_legend:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    first = results[0]
    fig.suptitle(title or f"coordinate check: {first.optimizer}, lr={first.lr:g} ({len(modules)} modules)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
