"""The training loop of the arena: one run of one optimizer on one workload.

:func:`train` builds the task, the optimizer and the schedule (:meth:`_Run.build`), resumes
from a checkpoint if there is one, and runs :func:`_loop`: per step get the batch,
forward+backward, check for divergence, clip, step, schedule, log; evaluate every
``eval_every`` steps and at the end; checkpoint so a killed run resumes exactly (a checkpoint
that cannot be used is discarded with a warning and the run starts again:
:mod:`optarena.arena.checkpoint`). What an optimizer needs from the loop beyond ``backward()``
and ``step()`` it declares through :class:`optarena.optim.hooks.TrainingHooks`.

Curve convention: the point at ``step = s`` is logged after ``s`` updates; its
``train_loss`` is the loss of the batch the ``s``-th update used, its ``eval_loss`` the
validation loss after that update. Step 0 holds the evaluation at initialisation. The
task's ``forward_stats`` (``lm``'s attention and logit scales) are logged with each step;
its final ``evaluate`` metrics (``"loss"``, and ``"accuracy"`` where the task measures it)
are stored with the run and returned in :attr:`RunResult.metrics`.

A non-finite loss ends the run as ``diverged``. A finite loss with a non-finite gradient
reaches the optimizer unless ``skip_nonfinite_grads`` is set; then the update is skipped
(:meth:`_Run.optimizer_step`) and counted in :attr:`RunResult.skipped_steps` and in the stored
metrics as ``"skipped_steps"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.nn.attention import SDPBackend, sdpa_kernel

import optarena
from optarena.arena.averaging import WeightAverager
from optarena.arena.checkpoint import Checkpoints
from optarena.arena.store import CurvePoint, ResultStore
from optarena.arena.workloads import Task, get_workload
from optarena.arena.workloads.base import MupWorkload, Workload
from optarena.optim import create_optimizer, get_spec
from optarena.optim.hooks import hooks_of
from optarena.schedules import SCHEDULES, as_lambda_lr, make_schedule

__all__ = ["RunConfig", "RunResult", "train"]


class RunConfig(BaseModel):
    """Everything that determines a run's numbers; its :meth:`key` identifies the run in the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str
    scale: str
    optimizer: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    schedule: str = "cosine"
    schedule_options: dict[str, Any] = Field(default_factory=dict)
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    steps: int | None = Field(None, gt=0, description="None: the workload's default budget")
    seed: int = 0
    grad_clip: float | None = Field(1.0, gt=0.0, description="max global grad norm; None disables clipping")
    eval_every: int | None = Field(None, gt=0, description="None: 8 evaluations per run")
    divergence_factor: float = Field(3.0, gt=1.0, description="diverged if train loss > factor x initial loss")
    workload_options: dict[str, Any] = Field(default_factory=dict)
    averaging: Literal["none", "ema", "uniform"] = "none"
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0, description="EMA decay per step (averaging='ema')")
    average_last: int = Field(4, ge=1, description="checkpoints in the uniform average (averaging='uniform')")
    parametrization: Literal["standard", "mup"] = "standard"
    mup_base_width: int | None = Field(None, gt=0, description="muP base width; None: the first scale's width")
    skip_nonfinite_grads: bool = Field(False, description="skip the update of a step whose gradient norm is not "
                                                          "finite; False lets it through to the divergence check")

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"unknown schedule {value!r}; valid: {', '.join(sorted(SCHEDULES))}")
        return value

    def resolved_steps(self) -> int:
        return self.steps if self.steps is not None else get_workload(self.workload).default_steps(self.scale)

    def key(self) -> str:
        """Hash of the settings that differ from the defaults (plus the step budget), so that a new
        field added with a default leaves the keys of existing runs, and their reuse, intact."""
        payload = self.model_dump(exclude_defaults=True)
        payload["steps"] = self.resolved_steps()
        blob = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class RunResult:
    run_id: int | None
    status: str  # ok | diverged | failed
    final_eval_loss: float | None
    final_train_loss: float | None
    diverged_step: int | None = None
    error: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    reused: bool = False
    # the final evaluation (ok runs): "loss", ...; with skip_nonfinite_grads also "skipped_steps" (every run)
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0  # updates skipped for a non-finite gradient (skip_nonfinite_grads)


def train(
    config: RunConfig,
    store: ResultStore | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run ``config`` to the end (or to divergence) and record it in ``store``.

    A finished run with the same key is returned from the store instead of being rerun.
    With ``checkpoint_dir`` the run saves every ``checkpoint_every`` steps (default: at each
    evaluation) and resumes from its last checkpoint; the checkpoint is removed when the run ends.
    """
    key = config.key()
    previous = store.finished_run(key) if store is not None else None
    if previous is not None:
        return RunResult(previous.id, previous.status, previous.final_eval_loss, previous.final_train_loss,
                         previous.diverged_step, previous.error, curve=store.curve(previous.id), reused=True,
                         metrics=previous.metrics)
    workload, spec = get_workload(config.workload), get_spec(config.optimizer)  # unknown names raise here
    try:
        run = _Run.build(config, workload, spec.uses_schedule)
    except (ValueError, TypeError, RuntimeError) as exc:  # a bad configuration: record it, let the sweep go on
        return _record_failed_setup(config, store, key, f"{type(exc).__name__}: {exc}")
    checkpoints = Checkpoints(Path(checkpoint_dir), key) if checkpoint_dir is not None else None
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        try:
            run.load_state_dict(saved)
        except Exception as exc:  # verified but not this run's shape: the half-loaded run is rebuilt
            reason = next(iter(str(exc).splitlines()), "")
            checkpoints.discard(f"does not fit this run ({type(exc).__name__}: {reason})")
            run, saved = _Run.build(config, workload, spec.uses_schedule), None
    resumed = saved is not None
    recorder = _Recorder(store, key, run.record(), resumed_at=run.start_step if resumed else None)
    status, diverged_step, error = "ok", None, None
    try:
        status, diverged_step = _loop(run, recorder, checkpoints, checkpoint_every or run.eval_every, on_step)
    except Exception as exc:  # a failing configuration is recorded; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    run.timing["wall"] = run.elapsed()
    metrics = run.metrics if status == "ok" else {}
    if config.skip_nonfinite_grads:
        metrics = {**metrics, "skipped_steps": float(run.skipped_steps)}
    recorder.finish(status=status, diverged_step=diverged_step, error=error, final_eval_loss=metrics.get("loss"),
                    final_train_loss=run.train_loss, timing=run.timing, metrics=metrics)
    if checkpoints is not None:
        checkpoints.remove()
    return RunResult(recorder.run_id, status, metrics.get("loss"), run.train_loss, diverged_step, error,
                     dict(run.timing), recorder.full_curve(resumed), metrics=dict(metrics),
                     skipped_steps=run.skipped_steps)


def _loop(run: _Run, recorder: _Recorder, checkpoints: Checkpoints | None, checkpoint_every: int,
          on_step: Callable[[int, int], None] | None) -> tuple[str, int | None]:
    """Train from ``run.start_step`` to ``run.steps``; returns the status and the step it diverged at."""
    task, hooks = run.task, run.hooks
    hooks.observe_batch_size(task.tokens_per_step)
    hooks.train()
    run.model.train()
    run.start_clock()
    if run.start_step == 0:
        recorder.log(CurvePoint(0, 0, None, run.evaluate()["loss"], run.lr(), None, 0.0))
    for step in range(run.start_step, run.steps):
        done = step + 1
        with run.timed("data"):
            batch = task.train_batch(step)
        with run.timed("forward_backward"):
            hooks.prepare_step()
            run.train_loss = run.forward_backward(batch)
            stats = task.forward_stats(run.model) if task.forward_stats is not None else {}
        with run.timed("optimizer"):
            if run.diverged(run.train_loss):
                recorder.log(CurvePoint(done, done * task.tokens_per_step, run.train_loss, None, run.lr(), None,
                                        run.elapsed()))
                return "diverged", done
            lr, grad_norm = run.lr(), run.clip_gradients()
            run.optimizer_step(batch, grad_norm)
        due = done % run.eval_every == 0 or done == run.steps or done in run.budget_steps
        eval_loss = run.evaluate(snapshot=True)["loss"] if due else None
        if done in run.budget_steps and checkpoints is not None:
            checkpoints.save_budget_model(done, run.model.state_dict())
        recorder.log(CurvePoint(done, done * task.tokens_per_step, run.train_loss, eval_loss, lr, grad_norm,
                                run.elapsed(), stats.get("max_attn_logit"), stats.get("logit_rms")))
        if eval_loss is not None and not math.isfinite(eval_loss):
            return "diverged", done
        if due:
            recorder.flush()
        if checkpoints is not None and done % checkpoint_every == 0 and done < run.steps:
            checkpoints.save(run.state_dict(done))
        if on_step is not None:
            on_step(done, run.steps)
    return "ok", None


def _versions() -> dict[str, str]:
    return {"optarena": str(optarena.__version__), "torch": str(torch.__version__)}  # plain str: weights_only loads it


def _build_mup(workload: Workload, config: RunConfig) -> tuple[Task, torch.optim.Optimizer]:
    """A muP model and optimizer (Yang et al., Tensor Programs V, arXiv:2203.03466) for a workload with a width."""
    from optarena.scaling.mup import create_mup_optimizer

    if not isinstance(workload, MupWorkload):
        raise ValueError(f"parametrization='mup' needs a workload with a width (d_model), like 'lm'; "
                         f"got workload {config.workload!r}")
    task, plan = workload.build_mup(config.scale, config.seed, config.mup_base_width, **config.workload_options)
    return task, create_mup_optimizer(config.optimizer, task.model, plan, **config.hparams)


def _budget_steps(schedule: Any) -> set[int]:
    """WSD-S's budgets: one model per budget in a single run, evaluated and saved where checkpoints are kept."""
    branch_points = getattr(schedule, "branch_points", None)
    return {b.budget for b in branch_points()} if callable(branch_points) else set()


class _Run:
    """The built pieces of one run and the per-step operations of the loop on them."""

    def __init__(self, config: RunConfig, task: Task, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
        self.config, self.task, self.model, self.optimizer = config, task, task.model, optimizer
        self.hooks = hooks_of(optimizer)
        self.steps = config.resolved_steps()
        self.eval_every = config.eval_every or max(1, self.steps // 8)
        self.scheduler = as_lambda_lr(optimizer, schedule)
        self.budget_steps = _budget_steps(schedule)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.averager = None if config.averaging == "none" else WeightAverager(
            self.model, config.averaging, ema_decay=config.ema_decay, last_k=config.average_last)
        self.timing = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0, "eval": 0.0, "wall": 0.0}
        self.start_step, self.initial_loss, self.train_loss, self.skipped_steps = 0, None, None, 0
        self.metrics: dict[str, float] = {}
        self._clock = time.perf_counter()

    @classmethod
    def build(cls, config: RunConfig, workload: Workload, uses_schedule: bool) -> _Run:
        steps = config.resolved_steps()
        torch.manual_seed(config.seed)
        if config.parametrization == "mup":
            task, optimizer = _build_mup(workload, config)
        else:
            task = workload.build(config.scale, config.seed, **config.workload_options)
            optimizer = create_optimizer(config.optimizer, task.model, **config.hparams)
        if uses_schedule:
            schedule = make_schedule(config.schedule, steps, cls.warmup(config), **config.schedule_options)
        else:  # schedule-free methods warm up and average by themselves
            schedule = make_schedule("constant", steps, 0)
        return cls(config, task, optimizer, schedule)

    @staticmethod
    def warmup(config: RunConfig) -> int:
        return round(config.warmup_fraction * config.resolved_steps())

    def record(self) -> dict[str, Any]:
        """The configuration stored with the run, with the facts the build resolved."""
        uses_schedule = get_spec(self.config.optimizer).uses_schedule
        return {
            **self.config.model_dump(), "steps": self.steps, "eval_every": self.eval_every,
            "warmup": self.warmup(self.config), "versions": _versions(), "task": self.task.info,
            "tokens_per_step": self.task.tokens_per_step,
            "effective_schedule": self.config.schedule if uses_schedule else "constant (schedule-free optimizer)",
        }

    # --- timing -------------------------------------------------------------------------------
    def start_clock(self) -> None:
        self._clock = time.perf_counter() - self.timing["wall"]

    def elapsed(self) -> float:
        return time.perf_counter() - self._clock

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timing[phase] += time.perf_counter() - start

    # --- one step -------------------------------------------------------------------------------
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def forward_backward(self, batch: Any) -> float:
        """The training loss of ``batch``, with its gradients unless the optimizer needs none."""
        if self.hooks.needs_backward:
            loss = self.task.loss(self.model, batch)
            loss.backward()
        else:
            with torch.no_grad():
                loss = self.task.loss(self.model, batch)
        return loss.item()

    def diverged(self, train_loss: float) -> bool:
        """Not finite, or above ``divergence_factor`` times the first step's loss."""
        self.initial_loss = train_loss if self.initial_loss is None else self.initial_loss
        limit = self.config.divergence_factor * max(self.initial_loss, 1e-12)
        return not math.isfinite(train_loss) or train_loss > limit

    def clip_gradients(self) -> float | None:
        """Clip to ``grad_clip`` and return the global gradient norm before clipping (None without gradients)."""
        if not self.hooks.needs_backward:
            return None
        if self.config.grad_clip is None:  # measure only: clipping at inf would still rescale every gradient by 1
            grads = [p.grad for p in self.params if p.grad is not None]
            return float(torch.nn.utils.get_total_norm(grads, foreach=True))
        return float(torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=True))

    def optimizer_step(self, batch: Any, grad_norm: float | None) -> None:
        """``step()`` and the Hessian refresh when due, then the schedule and the weight average.

        With ``skip_nonfinite_grads``, a step whose gradient norm is not finite leaves the
        parameters and the optimizer (its state, its Hessian and its ``observe_loss`` hook)
        untouched and is counted in ``skipped_steps``; the schedule and the weight average still
        advance, so that the schedule stays aligned with the step budget and the batches. Hooks
        called before the gradient is known (``prepare_step``) have run.
        """
        if self.config.skip_nonfinite_grads and grad_norm is not None and not math.isfinite(grad_norm):
            self.skipped_steps += 1
        else:
            self._update(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.averager is not None:
            self.averager.update()

    def _update(self, batch: Any) -> None:
        task, model, optimizer = self.task, self.model, self.optimizer
        self.hooks.observe_loss(self.train_loss)
        if self.hooks.needs_backward:
            optimizer.step()
        else:
            optimizer.step(torch.no_grad()(lambda: task.loss(model, batch)))
        if self.hooks.hessian_step_due():
            optimizer.zero_grad(set_to_none=True)
            sampled = task.sampled_loss
            # Hutchinson's estimator differentiates twice; only the math attention kernel supports that
            with sdpa_kernel(SDPBackend.MATH):
                self.hooks.update_hessian(lambda: task.loss(model, batch),
                                          (lambda: sampled(model, batch)) if sampled is not None else None,
                                          batch_size=task.tokens_per_step)

    def evaluate(self, snapshot: bool = False) -> dict[str, float]:
        """The task's metrics of the evaluated weights (the average, with averaging); kept in ``metrics``.

        ``snapshot`` first adds the current weights to a uniform average.
        """
        with self.timed("eval"):
            if snapshot and self.averager is not None:
                self.averager.snapshot()
            self.hooks.eval()
            self.model.eval()
            swapped = self.averager.swapped_in() if self.averager is not None else contextlib.nullcontext()
            with torch.no_grad(), swapped:
                self.metrics = {name: float(value) for name, value in self.task.evaluate(self.model).items()}
            self.model.train()
            self.hooks.train()
        return self.metrics

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self, step: int) -> dict[str, Any]:
        self.timing["wall"] = self.elapsed()
        return {"step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "initial_loss": self.initial_loss,
                "timing": dict(self.timing), "skipped_steps": self.skipped_steps, "versions": _versions(),
                "averager": self.averager.state_dict() if self.averager is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``ValueError`` for a state saved by other versions of optarena or torch."""
        if state["versions"] != _versions():
            raise ValueError(f"saved by {state['versions']}, this is {_versions()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_step, self.initial_loss, self.timing = state["step"], state["initial_loss"], state["timing"]
        self.skipped_steps = state["skipped_steps"]
        if self.averager is not None:
            self.averager.load_state_dict(state["averager"])


class _Recorder:
    """The run's row and curve in the store (when there is one), and the curve of this call."""

    def __init__(self, store: ResultStore | None, key: str, record: dict[str, Any],
                 resumed_at: int | None) -> None:
        self.store, self.run_id = store, None
        self.pending: list[CurvePoint] = []
        self.curve: list[CurvePoint] = []
        if store is not None:
            existing = store.get_run(key)
            if resumed_at is not None and existing is not None:
                self.run_id = existing.id
                store.truncate_curve(self.run_id, resumed_at)
            else:
                self.run_id = store.start_run(key, config=record)

    def log(self, point: CurvePoint) -> None:
        self.pending.append(point)
        self.curve.append(point)

    def flush(self) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.add_curve(self.run_id, self.pending)
        self.pending.clear()

    def finish(self, **outcome: Any) -> None:
        self.flush()
        if self.store is not None and self.run_id is not None:
            self.store.finish_run(self.run_id, **outcome)

    def full_curve(self, resumed: bool) -> list[CurvePoint]:
        """The whole curve: a resumed run's includes the part logged before the resume."""
        if resumed and self.store is not None and self.run_id is not None:
            return self.store.curve(self.run_id)
        return self.curve


def _record_failed_setup(config: RunConfig, store: ResultStore | None, key: str, error: str) -> RunResult:
    run_id = None
    if store is not None:
        run_id = store.start_run(key, config={**config.model_dump(), "steps": config.resolved_steps(),
                                              "versions": _versions()})
        store.finish_run(run_id, status="failed", error=error)
    return RunResult(run_id, "failed", None, None, error=error)
