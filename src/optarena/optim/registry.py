"""One registry of optimizers and their metadata; the arena reads nothing else.

Each optimizer registers an :class:`OptimizerSpec`: its class, family, defaults, the
fair search space the arena tunes over, its optimizer-state memory and its paper.
:func:`create_optimizer` builds an optimizer from a name, a model (parameters are then
split by :mod:`optarena.optim.partition`) or an iterable of parameters, and overrides.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from optarena.optim.partition import ParameterPartition, partition_parameters

__all__ = [
    "Categorical",
    "FloatRange",
    "OptimizerSpec",
    "Paper",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "register",
    "registered_name",
]

FAMILIES = ("elementwise", "matrix", "second-order", "zeroth-order", "memory-efficient")


@dataclass(frozen=True)
class Paper:
    title: str
    arxiv: str | None = None  # e.g. "1711.05101"; None for methods without an arXiv paper
    year: int | None = None

    def __str__(self) -> str:
        return f"{self.title} (arXiv:{self.arxiv})" if self.arxiv else self.title


@dataclass(frozen=True)
class FloatRange:
    """A continuous hyperparameter range; ``log=True`` samples uniformly in log space."""

    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"FloatRange needs finite low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scaled FloatRange needs low > 0, got low={self.low}")

    def from_unit(self, u: float) -> float:
        """Map ``u`` in [0, 1] onto the range (used by quasirandom search)."""
        if self.log:
            return self.low * math.exp(u * math.log(self.high / self.low))
        return self.low + u * (self.high - self.low)


@dataclass(frozen=True)
class Categorical:
    """A finite set of values (numbers, strings or tuples)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.choices) == 0:
            raise ValueError("Categorical needs at least one choice")

    def from_unit(self, u: float) -> Any:
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]


SearchDim = FloatRange | Categorical
ParamsBuilder = Callable[[ParameterPartition, dict[str, Any]], list[dict[str, Any]]]


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything the library and the arena need to know about one optimizer.

    ``state_bytes`` is the optimizer state kept per parameter for float32 parameters
    on the rule the optimizer is named after (e.g. Muon: one momentum buffer on hidden
    matrices = 4 bytes; its AdamW rule for the other parameters keeps 8).
    ``search_space`` maps constructor (or builder) keyword names to ranges; keys not
    listed keep ``defaults``. ``build_groups``, when given, turns a partitioned model
    into parameter groups (e.g. Muon's ``matrix=False`` groups); hyperparameters it
    consumes are removed from the dict it receives.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    family: str
    defaults: Mapping[str, Any]
    search_space: Mapping[str, SearchDim]
    state_bytes: float
    paper: Paper
    description: str = ""
    build_groups: ParamsBuilder | None = None
    builder_defaults: Mapping[str, Any] = field(default_factory=dict)
    uses_schedule: bool = True  # False for schedule-free methods: the trainer then holds the lr constant
    validate: Callable[[str, Mapping[str, Any]], None] | None = None  # checks hparams the class does not check

    def __post_init__(self) -> None:
        if self.name != self.name.lower() or not self.name.replace("_", "").isalnum():
            raise ValueError(f"optimizer names are lower-case with underscores, got {self.name!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if "lr" not in self.search_space:
            raise ValueError(f"{self.name}: the search space must tune 'lr', got {sorted(self.search_space)}")
        known = set(self.defaults) | set(self.builder_defaults)
        unknown = sorted(set(self.search_space) - known)
        if unknown:
            raise ValueError(f"{self.name}: search-space keys {unknown} are not in defaults {sorted(known)}")


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    """Add ``spec`` to the registry; names are unique, and so is each class's name."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered")
    other = registered_name(spec.cls)
    if other is not None and other != spec.name:
        raise ValueError(f"{spec.cls.__name__} is already registered as {other!r}; one name per optimizer")
    _REGISTRY[spec.name] = spec
    return spec


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under (what ``create_optimizer`` takes), or None."""
    return next((name for name, spec in _REGISTRY.items() if spec.cls is cls), None)


def list_optimizers() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> OptimizerSpec:
    """The spec registered under ``name``; unknown names list the closest valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown optimizer {name!r}.{hint} Registered: {', '.join(list_optimizers())}"
        ) from None


def decay_groups(partition: ParameterPartition, hparams: dict[str, Any]) -> list[dict[str, Any]]:
    """Default grouping for element-wise optimizers: no weight decay on vectors (biases, gains)."""
    groups = [{"params": partition.matrices(), "names": partition.matrix_names()}]
    if partition.vector:
        groups.append(
            {"params": [p for _, p in partition.vector], "names": [n for n, _ in partition.vector],
             "weight_decay": 0.0}
        )
    return [g for g in groups if g["params"]]


def constructor_arguments(cls: type) -> set[str]:
    """Keyword arguments of an optimizer class's ``__init__`` besides ``params``.

    An ``__init__`` that takes ``**kwargs`` passes them on, so the bases' arguments count too.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.name not in ("self", "params", "defaults")
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def create_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    param_roles: Mapping[str, str] | None = None,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``.

    With an ``nn.Module`` the parameters are split by :func:`partition_parameters` and
    grouped the way the optimizer's paper prescribes (e.g. Muon on hidden matrices and
    its AdamW rule on embeddings, readout and vectors; no weight decay on vectors).
    With an iterable of tensors or param-group dicts they are passed through unchanged.
    ``param_roles`` overrides the split by name (see :func:`partition_parameters`). Each
    group built from a model lists its parameters' names under ``"names"`` (not torch's
    ``"param_names"``, which would make ``add_param_group`` refuse a plain ``{"params": [...]}``).
    ``hparams`` override the registered defaults or set any other argument of the
    optimizer's constructor (e.g. ``foreach``, ``fused``); unknown keys fail with the valid ones.
    """
    spec = get_spec(name)
    valid = set(spec.defaults) | set(spec.builder_defaults) | constructor_arguments(spec.cls)
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise ValueError(f"{name}: unknown hyperparameters {unknown}; valid: {sorted(valid)}")
    merged = {**spec.defaults, **spec.builder_defaults, **hparams}
    if spec.validate is not None:
        spec.validate(spec.cls.__name__, merged)
    builder_args = {k: merged.pop(k) for k in spec.builder_defaults}
    if isinstance(model_or_params, nn.Module):
        partition = partition_parameters(model_or_params, roles=param_roles)
        builder = spec.build_groups or decay_groups
        params: Sequence[Any] = builder(partition, builder_args)
    else:
        if param_roles is not None:
            raise ValueError(f"{name}: param_roles needs an nn.Module, got an iterable of parameters")
        model_only = sorted(set(hparams) & set(spec.builder_defaults))
        if model_only:
            raise ValueError(
                f"{name}: {model_only} apply to the parameter groups built from a model; pass an nn.Module, "
                "or set these values on your own param groups"
            )
        params = list(model_or_params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
    return spec.cls(params, **merged)
