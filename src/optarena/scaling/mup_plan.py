"""The muP plan: per-parameter width ratios, and the multipliers they imply.

Yang et al., "Tensor Programs V" (arXiv:2203.03466), Table 3; the multipliers are explained in
:mod:`optarena.scaling.mup`, which applies them (init, readout multiplier, parameter groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import nn

from optarena.optim.muon import muon_scale
from optarena.optim.partition import ParameterPartition, partition_parameters
from optarena.optim.registry import get_spec

__all__ = ["DEFAULT_WD_EXPONENT", "FAMILIES", "BaseSpec", "MupPlan", "ParamScaling", "base_shapes", "mup_plan",
           "optimizer_family"]

FAMILIES = ("adam", "sgd", "spectral")
READOUT_MODES = ("multiplier", "weights")
DEFAULT_WD_EXPONENT = {"adam": 0.5, "sgd": 0.0, "spectral": 0.0}

BaseSpec = Any  # nn.Module | Mapping[str, Sequence[int]] | int | MupPlan


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
        exponent = DEFAULT_WD_EXPONENT[family] if wd_exponent is None else wd_exponent
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


def check_positive_int(name: str, value: Any) -> None:
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
    the same model (e.g. from ``lm``'s :func:`~optarena.arena.workloads.lm_mup.mup_lm_init_`), or
    the base width as an ``int`` together with ``width=`` (the width of ``model``). ``roles`` overrides the
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
        check_positive_int("base", base)
        if width is None:
            raise ValueError(f"base={base} is a width, so pass the model's width too (width=...)")
        check_positive_int("width", width)
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
