"""Split a model's parameters by the role they play, as matrix optimizers need.

Four roles (Jordan et al., Muon; Large et al., "Scalable Optimization in the Modular Norm"):

- ``hidden``: 2-D (or conv) weights inside the network; Muon and its descendants act on these.
- ``embedding``: lookup tables (``nn.Embedding`` weights).
- ``readout``: the output head (``lm_head``, ``head``, ``classifier``, ... or a weight tied to an embedding).
- ``vector``: 0-D and 1-D parameters (biases, norm gains, scalars).

The defaults follow module types and common names; ``roles`` overrides them with
regular expressions matched against parameter names, first match wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

__all__ = ["ROLES", "ParameterPartition", "partition_parameters"]

ROLES = ("hidden", "embedding", "readout", "vector")
DEFAULT_READOUT_PATTERN = r"(^|\.)(lm_head|head|readout|classifier|output|out_proj_final|fc_out)(\.|$)"

NamedParams = list[tuple[str, torch.nn.Parameter]]


@dataclass
class ParameterPartition:
    hidden: NamedParams = field(default_factory=list)
    embedding: NamedParams = field(default_factory=list)
    readout: NamedParams = field(default_factory=list)
    vector: NamedParams = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)  # for optimizers that hook modules (MKOR)

    def role_of(self, name: str) -> str:
        for role in ROLES:
            if any(n == name for n, _ in getattr(self, role)):
                return role
        raise KeyError(f"no parameter named {name!r}")

    def matrices(self) -> list[torch.nn.Parameter]:
        """Every parameter with two or more dimensions (hidden, embedding and readout)."""
        return [p for role in ("hidden", "embedding", "readout") for _, p in getattr(self, role)]

    def matrix_names(self) -> list[str]:
        return [n for role in ("hidden", "embedding", "readout") for n, _ in getattr(self, role)]

    def summary(self) -> dict[str, int]:
        """Number of scalar parameters per role."""
        return {role: sum(p.numel() for _, p in getattr(self, role)) for role in ROLES}


def partition_parameters(
    model: nn.Module,
    roles: Mapping[str, str] | None = None,
    readout_pattern: str = DEFAULT_READOUT_PATTERN,
) -> ParameterPartition:
    """Assign every trainable parameter of ``model`` to one role.

    ``roles`` maps regular expressions (``re.search`` on the parameter name) to a role in
    ``ROLES``; e.g. ``{r"^wte\\.": "embedding", r"proj$": "readout"}``. Parameters with
    ``requires_grad=False`` are left out. Shared (tied) parameters appear once, under the
    first name, and a weight tied between an embedding and the readout counts as embedding.
    """
    overrides = dict(roles or {})
    for pattern, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"role for pattern {pattern!r} must be one of {ROLES}, got {role!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"invalid regular expression {pattern!r}: {err}") from None

    embedding_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    readout_re = re.compile(readout_pattern)
    part = ParameterPartition(model=model)
    for name, param in model.named_parameters():  # deduplicates tied parameters
        if not param.requires_grad:
            continue
        role = next((r for pat, r in overrides.items() if re.search(pat, name)), None)
        if role is None:
            if param.ndim < 2:
                role = "vector"
            elif id(param) in embedding_ids:
                role = "embedding"
            elif readout_re.search(name):
                role = "readout"
            else:
                role = "hidden"
        if role == "hidden" and param.ndim < 2:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(param.shape)}; only tensors with 2 or more "
                "dimensions can be 'hidden' matrices"
            )
        getattr(part, role).append((name, param))
    return part
