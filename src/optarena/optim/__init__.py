"""Optimizers, each a ``torch.optim.Optimizer``, and the registry the arena reads.

>>> from optarena.optim import create_optimizer
>>> opt = create_optimizer("muon", model)        # doctest: +SKIP
"""

from optarena.optim.partition import ROLES, ParameterPartition, partition_parameters
from optarena.optim.registry import (
    Categorical,
    FloatRange,
    OptimizerSpec,
    Paper,
    create_optimizer,
    get_spec,
    list_optimizers,
    register,
    registered_name,
)

# Importing an optimizer module registers it; one line per module, keep sorted.
from optarena.optim import builtin  # noqa: F401  (registers adamw, sgd)
from optarena.optim.adamp import AdamP, SGDP
from optarena.optim.adan import Adan
from optarena.optim.auon import AuON, HybridAuON
from optarena.optim.classp import CLASSP
from optarena.optim.drop_muon import DropMuon
from optarena.optim.fismo import FISMO
from optarena.optim.frugal import FRUGAL
from optarena.optim.lion import Lion
from optarena.optim.memory_momentum import AMAdamW, AMSGD
from optarena.optim.mkor import MKOR, MKORH
from optarena.optim.muon import Muon
from optarena.optim.muon_spectral import MuonSpectral
from optarena.optim.namo import NAMO, NAMOD
from optarena.optim.scale import SCALE
from optarena.optim.schedule_free import ScheduleFreeAdamW
from optarena.optim.sophia import SophiaG, SophiaH
# (new optimizer modules: add their import line above this comment)
from optarena.optim.orthogonalize import newton_schulz, polar_factor

__all__ = [
    "AMAdamW", "AMSGD", "CLASSP", "FISMO", "FRUGAL", "MKOR", "MKORH", "NAMO", "NAMOD", "ROLES", "SCALE", "SGDP",
    "AdamP", "Adan", "AuON", "Categorical", "DropMuon", "FloatRange", "HybridAuON", "Lion", "Muon", "MuonSpectral",
    "OptimizerSpec", "Paper", "ParameterPartition", "ScheduleFreeAdamW", "SophiaG", "SophiaH", "create_optimizer",
    "get_spec", "list_optimizers", "newton_schulz", "partition_parameters", "polar_factor", "register",
    "registered_name",
]
