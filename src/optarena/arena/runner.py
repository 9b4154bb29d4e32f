"""``optarena arena`` as a library call: validated settings -> tuning per cell -> store -> report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from optarena.arena.store import ResultStore, default_storage_url
from optarena.arena.trainer import RunConfig, RunResult
from optarena.arena.tuning import PROTOCOLS, CellResult, tune_cell
from optarena.arena.workloads import get_workload
from optarena.optim import get_spec
from optarena.schedules import parse_schedule

__all__ = ["BUDGETS", "ArenaConfig", "cells_of", "run_arena"]

# preset -> (trials per optimizer, seeds for the best configuration, steps override or None = workload
# default, evaluations per run)
BUDGETS: dict[str, tuple[int, int, int | None, int]] = {
    "smoke": (2, 2, 30, 3),
    "default": (6, 3, None, 8),
    "full": (20, 5, None, 10),
}


class ArenaConfig(BaseModel):
    """The settings of one arena study; everything that changes its numbers goes into :meth:`study_name`."""

    model_config = ConfigDict(extra="forbid")

    workloads: list[str] = Field(default_factory=lambda: ["lm"])
    scales: list[str] | None = None  # None: each workload's first scale
    optimizers: list[str] = Field(default_factory=lambda: ["adamw", "sgd", "muon", "lion"])
    budget: str = "default"
    trials: int | None = Field(None, ge=1)
    seeds: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    protocol: str = "random"
    schedule: str = "cosine"
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    seed: int = 0
    baseline: str = "adamw"
    out: Path = Path("arena-results")
    storage: str | None = None

    @field_validator("workloads")
    @classmethod
    def _workloads_exist(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one workload")
        for name in value:
            get_workload(name)  # raises with the valid names
        return value

    @field_validator("optimizers")
    @classmethod
    def _optimizers_exist(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one optimizer")
        if len(set(value)) != len(value):
            raise ValueError(f"optimizers are listed twice: {value}")
        for name in value:
            get_spec(name)
        return value

    @field_validator("budget")
    @classmethod
    def _known_budget(cls, value: str) -> str:
        if value not in BUDGETS:
            raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {value!r}")
        return value

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {value!r}")
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _scales_exist(self) -> "ArenaConfig":
        if self.scales is not None:
            known = {s for w in self.workloads for s in get_workload(w).scales}
            unknown = sorted(set(self.scales) - known)
            if unknown:
                raise ValueError(f"scales {unknown} belong to none of {self.workloads}; valid: {sorted(known)}")
        return self

    def resolved(self) -> dict[str, Any]:
        """Trials, seeds, steps and evaluations per run after applying the budget preset."""
        trials, seeds, steps, evaluations = BUDGETS[self.budget]
        return {"trials": self.trials or trials, "seeds": self.seeds or seeds, "steps": self.steps or steps,
                "evaluations": evaluations}

    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.out)

    def study_settings(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"out", "storage", "budget"})
        data.update(self.resolved())
        return data

    def study_name(self) -> str:
        blob = json.dumps(self.study_settings(), sort_keys=True)
        return "arena-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def cells_of(config: ArenaConfig) -> list[tuple[str, str]]:
    """(workload, scale) pairs: the requested scales each workload has, else its first scale."""
    cells = []
    for name in config.workloads:
        scales = get_workload(name).scales
        chosen = [s for s in (config.scales or []) if s in scales] or [scales[0]]
        cells += [(name, s) for s in chosen]
    return cells


def run_arena(
    config: ArenaConfig,
    *,
    on_run: Callable[[str, str, RunResult], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[ResultStore, str, list[CellResult]]:
    """Tune every optimizer on every cell with the same budget; returns the store, study name and results."""
    config.out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(config.storage_url())
    study = config.study_name()
    settings = config.study_settings()
    store.save_study(study, settings)
    budget = config.resolved()
    schedule, schedule_options = parse_schedule(config.schedule)
    checkpoints = config.out / "checkpoints"
    results = []
    for workload, scale in cells_of(config):
        for optimizer in config.optimizers:
            steps = budget["steps"] or get_workload(workload).default_steps(scale)
            base = RunConfig(
                workload=workload, scale=scale, optimizer=optimizer, schedule=schedule,
                schedule_options=schedule_options, warmup_fraction=config.warmup_fraction, steps=steps,
                seed=config.seed, grad_clip=config.grad_clip, eval_every=max(1, steps // budget["evaluations"]),
            )
            cell = f"{workload}/{scale}/{optimizer}"
            results.append(tune_cell(
                base, store, study=study, n_trials=budget["trials"], seeds=budget["seeds"],
                protocol=config.protocol, checkpoint_dir=str(checkpoints),
                on_run=(lambda label, result, cell=cell: on_run(cell, label, result)) if on_run else None,
                on_step=on_step,
            ))
    return store, study, results
