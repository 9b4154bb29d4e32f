"""``optarena arena`` as a library call: validated settings -> tuning per cell -> store -> report.

Scaling out. ``workers=N`` starts N - 1 worker processes next to this one (each with one
torch thread); every worker walks the same list of cells and trains whichever run is
next and not claimed by a live worker (see :class:`optarena.arena.claims.Claims`), so they
share one study through the store. Several machines share a study the same way: run the
same command on each with one ``--storage`` URL, e.g. ``postgresql://user:pw@host/db``
(our tables and Optuna's live side by side in that database: each cell is an Optuna study there,
see :mod:`optarena.arena.studies`). Killing any worker, or
all of them, loses at most the steps since each run's last checkpoint: rerunning the
command (or the surviving workers) picks the runs up.

Horizons. ``horizons=[0.5, 1, 2]`` runs every cell at those multiples of its step budget,
each tuned on its own, so the analysis can fit final loss against budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from optarena.arena.claims import Claims, retry_on_race
from optarena.arena.store import Cell, ResultStore, open_store, storage_url
from optarena.arena.trainer import RunConfig, RunResult
from optarena.arena.tuner import DONE, PROTOCOLS, RAN, CellResult, CellTuner
from optarena.arena.workloads import get_workload
from optarena.arena.workloads.base import MupWorkload
from optarena.optim import get_spec
from optarena.schedules import make_schedule, parse_schedule

__all__ = ["BUDGETS", "MAX_SEED", "ArenaConfig", "check_out_dir", "workload_scales", "horizon_steps", "run_arena"]

MAX_SEED = 2**31 - 1  # seeds feed torch, numpy and Optuna, whose generators take 32-bit seeds

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
    trials: int | None = Field(None, ge=1, le=10_000)
    seeds: int | None = Field(None, ge=1, le=1_000)
    steps: int | None = Field(None, ge=1, le=10**9)
    protocol: str = "random"
    schedule: str = "cosine"
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    baseline: str = "adamw"
    out: Path = Path("arena-results")
    storage: str | None = None
    horizons: list[float] = Field(default_factory=lambda: [1.0])  # multiples of each cell's step budget
    parametrization: Literal["standard", "mup"] = "standard"  # mup: width workloads only (lm)
    skip_nonfinite_grads: bool = False  # skip (and count) steps whose gradient is not finite, instead of diverging
    workers: int = Field(1, ge=1, le=256)  # processes on this machine; not part of the study's identity
    lease_seconds: float = Field(120.0, gt=0)  # a claim without heartbeat for this long is taken over

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

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, value: Path) -> Path:
        check_out_dir(value)
        return value

    @field_validator("horizons")
    @classmethod
    def _valid_horizons(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one horizon (1 = the default step budget)")
        bad = [h for h in value if not (math.isfinite(h) and h > 0)]
        if bad:
            raise ValueError(f"horizons must be finite multiples > 0 of the step budget, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"horizons are listed twice: {value}")
        return value

    @model_validator(mode="after")
    def _scales_exist(self) -> "ArenaConfig":
        if self.scales is not None:
            known = {s for w in self.workloads for s in get_workload(w).scales}
            unknown = sorted(set(self.scales) - known)
            if unknown:
                raise ValueError(f"scales {unknown} belong to none of {self.workloads}; valid: {sorted(known)}")
        if self.parametrization == "mup":
            flat = [w for w in self.workloads if not isinstance(get_workload(w), MupWorkload)]
            if flat:
                raise ValueError(f"parametrization 'mup' needs workloads with a width, like 'lm'; "
                                 f"{', '.join(flat)} {'has' if len(flat) == 1 else 'have'} none")
        schedule, options = parse_schedule(self.schedule)
        for workload, scale in workload_scales(self):
            steps = horizon_steps(self, workload, scale)
            if len(set(steps)) != len(steps):
                raise ValueError(f"horizons {self.horizons} give the same number of steps twice on "
                                 f"{workload}/{scale} ({steps}); use horizons further apart or more steps")
            for n in steps:  # build it as every run will: options that depend on the budget are checked too
                make_schedule(schedule, n, round(self.warmup_fraction * n), **options)
        return self

    def resolved(self) -> dict[str, Any]:
        """Trials, seeds, steps and evaluations per run after applying the budget preset."""
        trials, seeds, steps, evaluations = BUDGETS[self.budget]
        return {"trials": self.trials or trials, "seeds": self.seeds or seeds, "steps": self.steps or steps,
                "evaluations": evaluations}

    def storage_url(self) -> str:
        return storage_url(self.storage, self.out)

    def study_settings(self) -> dict[str, Any]:
        """What the numbers depend on. Workers and the lease do not change them; nor does a default horizon."""
        data = self.model_dump(mode="json", exclude={"out", "storage", "budget", "workers", "lease_seconds"})
        if self.horizons == [1.0]:
            del data["horizons"]  # the default budget alone: the name depends only on what was asked for
        if self.parametrization == "standard":
            del data["parametrization"]
        if not self.skip_nonfinite_grads:
            del data["skip_nonfinite_grads"]  # off by default: existing studies keep their names
        data.update(self.resolved())
        return data

    def study_name(self) -> str:
        blob = json.dumps(self.study_settings(), sort_keys=True)
        return "arena-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that is an existing file, or lies under one."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {str(out)!r} must be a folder, but {str(path)!r} is a file")


def workload_scales(config: ArenaConfig) -> list[tuple[str, str]]:
    """(workload, scale) pairs: the requested scales each workload has, else its first scale."""
    cells = []
    for name in config.workloads:
        scales = get_workload(name).scales
        chosen = [s for s in (config.scales or []) if s in scales] or [scales[0]]
        cells += [(name, s) for s in chosen]
    return cells


def horizon_steps(config: ArenaConfig, workload: str, scale: str) -> list[int]:
    """Training steps at each horizon: the horizon times the budget's steps (or the workload's default)."""
    steps = config.resolved()["steps"] or get_workload(workload).default_steps(scale)
    return [max(1, round(h * steps)) for h in config.horizons]


def _tuners(config: ArenaConfig, store: ResultStore, claims: Claims, study: str, *,
            on_run: Callable[[Cell, str, RunResult], None] | None = None,
            on_step: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[CellTuner]:
    """One tuner per cell (workload, scale, horizon, optimizer), in the order a single worker runs them."""
    budget = config.resolved()
    schedule, schedule_options = parse_schedule(config.schedule)
    checkpoints = str(config.out / "checkpoints")
    tuners = []
    for workload, scale in workload_scales(config):
        for steps in horizon_steps(config, workload, scale):
            for optimizer in config.optimizers:
                base = RunConfig(
                    workload=workload, scale=scale, optimizer=optimizer, schedule=schedule,
                    schedule_options=schedule_options, warmup_fraction=config.warmup_fraction, steps=steps,
                    seed=config.seed, grad_clip=config.grad_clip,
                    eval_every=max(1, steps // budget["evaluations"]), parametrization=config.parametrization,
                    skip_nonfinite_grads=config.skip_nonfinite_grads,
                )
                tuner = CellTuner(
                    base, store, claims, study=study, n_trials=budget["trials"], seeds=budget["seeds"],
                    protocol=config.protocol, checkpoint_dir=checkpoints, on_step=on_step, should_stop=should_stop)
                if on_run is not None:
                    tuner.on_run = lambda label, result, cell=tuner.cell: on_run(cell, label, result)
                tuners.append(tuner)
    return tuners


def _work(tuners: list[CellTuner], *, poll_seconds: float, should_stop: Callable[[], bool] | None = None,
          idle: Callable[[], None] | None = None) -> bool:
    """Advance the cells until all are done; always the first cell that can make progress.

    One worker alone therefore runs the cells in order, each to the end, as a sequential loop
    would. Returns False if ``should_stop`` asked to stop first.
    """
    while True:
        if should_stop is not None and should_stop():
            return False
        progressed, unfinished = False, False
        for tuner in tuners:
            state = tuner.advance()
            if state == RAN:
                progressed = True
                break
            unfinished = unfinished or state != DONE
        if not progressed:
            if not unfinished:
                return True
            if idle is not None:
                idle()
            time.sleep(poll_seconds)


def _worker_main(settings_json: str, parent_pid: int) -> None:
    """A worker process started by :func:`run_arena`: one torch thread; stops if its parent dies."""
    import torch

    torch.set_num_threads(1)
    config = ArenaConfig.model_validate_json(settings_json)
    store = open_store(config.storage_url())
    claims = Claims(store.engine, lease_seconds=config.lease_seconds)

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    tuners = _tuners(config, store, claims, config.study_name(), should_stop=orphaned)
    _work(tuners, poll_seconds=_poll_seconds(config), should_stop=orphaned)


def _poll_seconds(config: ArenaConfig) -> float:
    return min(0.5, config.lease_seconds / 10)


def run_arena(
    config: ArenaConfig,
    *,
    on_run: Callable[[Cell, str, RunResult], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[ResultStore, str, list[CellResult]]:
    """Tune every optimizer on every cell with the same budget; returns the store, study name and results.

    With ``config.workers > 1`` this process is worker 0 (it reports progress) and starts the
    others; it returns when every cell is complete, whoever trained its runs.
    """
    config.out.mkdir(parents=True, exist_ok=True)
    store = open_store(config.storage_url())
    study = config.study_name()
    settings = config.study_settings()
    retry_on_race(lambda: store.save_study(study, settings))
    claims = Claims(store.engine, lease_seconds=config.lease_seconds)
    children: list[subprocess.Popen] = []
    if config.workers > 1:
        import torch

        torch.set_num_threads(1)
        # Fresh interpreters (not fork: torch's thread pools do not survive it; not multiprocessing's
        # spawn: it re-imports the caller's __main__, which breaks scripts without a main guard).
        command = [sys.executable, "-c", "import sys; from optarena.arena.runner import _worker_main; "
                   "_worker_main(sys.argv[1], int(sys.argv[2]))", config.model_dump_json(), str(os.getpid())]
        children = [subprocess.Popen(command) for _ in range(config.workers - 1)]
    tuners = _tuners(config, store, claims, study, on_run=on_run, on_step=on_step)
    try:
        # poll() reaps a dead worker, so its claims read as stale at once (a zombie's pid still exists).
        _work(tuners, poll_seconds=_poll_seconds(config),
              idle=(lambda: [child.poll() for child in children]) if children else None)
    finally:
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.terminate()
                child.wait()
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # e.g. another arena still writing: its end does it
            store.checkpoint()  # results.db alone now holds every result (a copy needs no -wal file)
    return store, study, [t.result() for t in tuners]
