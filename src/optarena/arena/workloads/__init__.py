"""Registered workloads; ``get_workload(name)`` builds nothing until ``build`` is called.

>>> from optarena.arena.workloads import get_workload
>>> task = get_workload("lm").build("tiny", seed=0)      # doctest: +SKIP
>>> loss = task.loss(task.model, task.train_batch(0))     # doctest: +SKIP
>>> task.evaluate(task.model)                           # doctest: +SKIP
{'loss': 5.55...}

Each workload module registers itself at the bottom of its file with
:func:`register_workload`; importing it here (one line per module) makes it available.
:class:`~optarena.arena.workloads.base.ConfiguredWorkload` gives a workload whose scales are
presets of a dataclass its ``config(scale, **overrides)``.
"""

from __future__ import annotations

import difflib

from optarena.arena.workloads.base import Task, Workload

__all__ = ["WORKLOADS", "Task", "Workload", "get_workload", "list_workloads", "register_workload"]

WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    """Add ``workload`` under ``workload.name``; registering a different object twice is an error."""
    name = getattr(workload, "name", None)
    if not isinstance(name, str) or not name or name != name.lower() or " " in name:
        raise ValueError(f"a workload name must be a non-empty lower-case string without spaces, got {name!r}")
    for attribute in ("scales", "metric", "build", "default_steps", "target"):
        if not hasattr(workload, attribute):
            raise TypeError(f"workload {name!r} lacks {attribute!r}, which the Workload protocol requires")
    if not workload.scales:
        raise ValueError(f"workload {name!r} must name at least one scale")
    existing = WORKLOADS.get(name)
    if existing is not None and existing is not workload:
        raise ValueError(f"a workload named {name!r} is already registered ({type(existing).__name__})")
    WORKLOADS[name] = workload
    return workload


def get_workload(name: str) -> Workload:
    """The workload registered under ``name``; an unknown name lists the valid ones, closest first."""
    try:
        return WORKLOADS[name]
    except (KeyError, TypeError):
        pass
    query = str(name).lower()
    ranked = sorted(WORKLOADS, key=lambda n: (-difflib.SequenceMatcher(None, query, n).ratio(), n))
    valid = ", ".join(repr(n) for n in ranked) or "(none registered)"
    raise ValueError(f"unknown workload {name!r}; valid workloads (closest first): {valid}")


def list_workloads() -> list[str]:
    """Names of the registered workloads, sorted."""
    return sorted(WORKLOADS)


# Importing a workload module registers it; one line per module, keep sorted.
from optarena.arena.workloads import digits  # noqa: E402,F401
from optarena.arena.workloads import lm  # noqa: E402,F401
from optarena.arena.workloads import logreg  # noqa: E402,F401
from optarena.arena.workloads import matrix_sensing  # noqa: E402,F401
from optarena.arena.workloads import modular  # noqa: E402,F401
from optarena.arena.workloads import quadratic  # noqa: E402,F401
# (new workload modules: add their import line above this comment)
