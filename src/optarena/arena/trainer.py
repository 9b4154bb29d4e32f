"""THE training loop of the arena: one run of one optimizer on one workload.

Read it top to bottom like nanoGPT's ``train.py``: build the task, the optimizer and the
schedule; then per step get the batch, forward+backward, check for divergence, clip,
step, schedule, log; evaluate every ``eval_every`` steps and at the end; checkpoint so a
killed run resumes exactly. Optimizer hooks (``prepare_step``, ``observe_loss``,
``hessian_step_due``/``update_hessian``, ``train``/``eval``) are called when an optimizer defines them.

Curve convention: the point at ``step = s`` is logged after ``s`` updates; its
``train_loss`` is the loss of the batch the ``s``-th update used, its ``eval_loss`` the
validation loss after that update. Step 0 holds the evaluation at initialisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.nn.attention import SDPBackend, sdpa_kernel

import optarena
from optarena.arena.averaging import WeightAverager
from optarena.arena.store import CurvePoint, ResultStore
from optarena.arena.workloads import get_workload
from optarena.optim import create_optimizer, get_spec
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


def _versions() -> dict[str, str]:
    return {"optarena": optarena.__version__, "torch": torch.__version__}


def _checkpoint_path(checkpoint_dir: Path, key: str) -> Path:
    return checkpoint_dir / f"{key}.pt"


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def _build_mup(workload: Any, config: RunConfig) -> tuple[Any, torch.optim.Optimizer]:
    """Build a muP model and optimizer (Yang et al., Tensor Programs V, arXiv:2203.03466) for width workloads."""
    from optarena.scaling.mup import create_mup_optimizer, mup_lm_config, mup_lm_init_

    if not callable(getattr(workload, "config", None)) or not hasattr(workload.config(config.scale), "d_model"):
        raise ValueError(f"parametrization='mup' needs a workload with a width (d_model), like 'lm'; "
                         f"got workload {config.workload!r}")
    options = dict(config.workload_options)
    width = workload.config(config.scale, **options).d_model
    base_width = config.mup_base_width or workload.config(workload.scales[0]).d_model
    options.update(mup_lm_config(base_width, width))
    task = workload.build(config.scale, config.seed, **options)
    plan = mup_lm_init_(task.model, base_width)
    return task, create_mup_optimizer(config.optimizer, task.model, plan, **config.hparams)


def _call_optional(obj: Any, name: str) -> None:
    method = getattr(obj, name, None)
    if callable(method):
        method()


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
    if store is not None:
        previous = store.get_run(key)
        if previous is not None and previous.finished:
            return RunResult(previous.id, previous.status, previous.final_eval_loss, previous.final_train_loss,
                             previous.diverged_step, previous.error, curve=store.curve(previous.id), reused=True)

    steps = config.resolved_steps()
    eval_every = config.eval_every or max(1, steps // 8)
    checkpoint_every = checkpoint_every or eval_every
    spec = get_spec(config.optimizer)
    workload = get_workload(config.workload)
    warmup = round(config.warmup_fraction * steps)
    torch.manual_seed(config.seed)
    try:
        if config.parametrization == "mup":
            task, optimizer = _build_mup(workload, config)
        else:
            task = workload.build(config.scale, config.seed, **config.workload_options)
            optimizer = create_optimizer(config.optimizer, task.model, **config.hparams)
        model = task.model
        if spec.uses_schedule:
            schedule = make_schedule(config.schedule, steps, warmup, **config.schedule_options)
        else:  # schedule-free methods warm up and average by themselves
            schedule = make_schedule("constant", steps, 0)
        scheduler = as_lambda_lr(optimizer, schedule)
    except (ValueError, TypeError, RuntimeError) as exc:  # a bad configuration: record it, let the sweep go on
        error = f"{type(exc).__name__}: {exc}"
        run_id = None
        if store is not None:
            run_id = store.start_run(key, config={**config.model_dump(), "steps": steps, "versions": _versions()})
            store.finish_run(run_id, status="failed", error=error)
        return RunResult(run_id, "failed", None, None, error=error)
    params = [p for p in model.parameters() if p.requires_grad]
    averager = None if config.averaging == "none" else WeightAverager(
        model, config.averaging, ema_decay=config.ema_decay, last_k=config.average_last)
    # WSD-S: one model per budget in a single run (evaluated, and saved where checkpoints are kept)
    branch_points = getattr(schedule, "branch_points", None)
    budget_steps = {b.budget for b in branch_points()} if callable(branch_points) else set()

    record = {
        **config.model_dump(), "steps": steps, "eval_every": eval_every, "warmup": warmup,
        "versions": _versions(), "task": task.info, "tokens_per_step": task.tokens_per_step,
        "effective_schedule": config.schedule if spec.uses_schedule else "constant (schedule-free optimizer)",
    }
    ckpt_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = _checkpoint_path(Path(checkpoint_dir), key)
    timing = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0, "eval": 0.0, "wall": 0.0}
    start_step, initial_loss = 0, None
    resumed = ckpt_path is not None and ckpt_path.exists()
    if resumed:
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, initial_loss, timing = state["step"], state["initial_loss"], state["timing"]
        if averager is not None:
            averager.load_state_dict(state["averager"])
        if state.get("optimizer_mode") == "train":
            _call_optional(optimizer, "train")

    run_id = None
    if store is not None:
        existing = store.get_run(key)
        if resumed and existing is not None:
            run_id = existing.id
            store.truncate_curve(run_id, start_step)
        else:
            run_id = store.start_run(key, config=record)

    pending: list[CurvePoint] = []
    curve: list[CurvePoint] = []

    def log(point: CurvePoint) -> None:
        pending.append(point)
        curve.append(point)

    def flush() -> None:
        if store is not None and run_id is not None:
            store.add_curve(run_id, pending)
        pending.clear()

    def evaluate() -> float:
        t0 = time.perf_counter()
        _call_optional(optimizer, "eval")
        model.eval()
        with torch.no_grad(), (averager.swapped_in() if averager is not None else contextlib.nullcontext()):
            value = float(task.evaluate(model))
        model.train()
        _call_optional(optimizer, "train")
        timing["eval"] += time.perf_counter() - t0
        return value

    _call_optional(optimizer, "train")
    model.train()
    wall_start = time.perf_counter() - timing["wall"]
    status, diverged_step, error, train_loss, eval_loss = "ok", None, None, None, None
    try:
        if start_step == 0:
            eval_loss = evaluate()
            log(CurvePoint(0, 0, None, eval_loss, scheduler.get_last_lr()[0], None, 0.0))
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            batch = task.train_batch(step)
            t1 = time.perf_counter()
            _call_optional(optimizer, "prepare_step")
            loss = task.loss(model, batch)
            loss.backward()
            t2 = time.perf_counter()
            train_loss = loss.item()
            initial_loss = train_loss if initial_loss is None else initial_loss
            if not math.isfinite(train_loss) or train_loss > config.divergence_factor * max(initial_loss, 1e-12):
                status, diverged_step = "diverged", step + 1
                log(CurvePoint(step + 1, (step + 1) * task.tokens_per_step, train_loss, None,
                               scheduler.get_last_lr()[0], None, time.perf_counter() - wall_start))
                break
            observe_loss = getattr(optimizer, "observe_loss", None)  # MKOR-H decides when to switch from it
            if callable(observe_loss):
                observe_loss(train_loss)
            lr = scheduler.get_last_lr()[0]
            if config.grad_clip is None:  # measure only: clipping at inf would still rescale every gradient by 1
                grad_norm = float(torch.nn.utils.get_total_norm(
                    [p.grad for p in params if p.grad is not None], foreach=True))
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True))
            optimizer.step()
            if callable(getattr(optimizer, "hessian_step_due", None)) and optimizer.hessian_step_due():
                optimizer.zero_grad(set_to_none=True)
                sampled = task.sampled_loss
                # Hutchinson's estimator differentiates twice; only the math attention kernel supports that
                with sdpa_kernel(SDPBackend.MATH):
                    optimizer.update_hessian(lambda: task.loss(model, batch),
                                             (lambda: sampled(model, batch)) if sampled is not None else None,
                                             batch_size=task.tokens_per_step)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if averager is not None:
                averager.update()
            t3 = time.perf_counter()
            timing["data"] += t1 - t0
            timing["forward_backward"] += t2 - t1
            timing["optimizer"] += t3 - t2
            done = step + 1
            due = done % eval_every == 0 or done == steps or done in budget_steps
            if averager is not None and due:
                averager.snapshot()
            eval_loss = evaluate() if due else None
            if done in budget_steps and ckpt_path is not None:
                torch.save(model.state_dict(), ckpt_path.with_name(f"{key}-budget{done}.pt"))
            stats = getattr(model, "stats", None) or {}
            log(CurvePoint(done, done * task.tokens_per_step, train_loss, eval_loss, lr, grad_norm,
                           time.perf_counter() - wall_start, stats.get("max_attn_logit"), stats.get("logit_rms")))
            if eval_loss is not None and not math.isfinite(eval_loss):
                status, diverged_step = "diverged", done
                break
            if due:
                flush()
            if ckpt_path is not None and done % checkpoint_every == 0 and done < steps:
                timing["wall"] = time.perf_counter() - wall_start
                _save_checkpoint(ckpt_path, {
                    "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "initial_loss": initial_loss, "timing": dict(timing),
                    "optimizer_mode": "train", "averager": averager.state_dict() if averager is not None else None,
                })
            if on_step is not None:
                on_step(done, steps)
    except Exception as exc:  # a failing configuration is recorded; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    timing["wall"] = time.perf_counter() - wall_start
    flush()
    final_eval = eval_loss if status == "ok" else None
    if store is not None and run_id is not None:
        store.finish_run(run_id, status=status, diverged_step=diverged_step, error=error,
                         final_eval_loss=final_eval, final_train_loss=train_loss, timing=timing)
    if ckpt_path is not None and ckpt_path.exists():
        ckpt_path.unlink()
    if store is not None and run_id is not None and resumed:
        curve = store.curve(run_id)  # include the part logged before the resume
    return RunResult(run_id, status, final_eval, train_loss, diverged_step, error, dict(timing), curve)
