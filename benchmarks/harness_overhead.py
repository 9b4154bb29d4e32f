"""Harness overhead: the arena trainer's steps/second on ``lm`` tiny vs a bare hand-written loop.

All loops do the same work: the same model and batches (``lm`` tiny, seed 0), AdamW with
the registry defaults and parameter groups, the cosine schedule with 5% warmup through the
same ``LambdaLR``, global-norm clipping at 1.0, ``zero_grad(set_to_none=True)``. The bare
loop is what one would write by hand: batch, forward, backward, clip, step, zero_grad,
schedule, nothing else, plus the step-0 evaluation the trainer also does (untimed), so that
both loops start from the same allocator state after that evaluation's large no-grad
batches. ``trainer`` is :func:`optarena.arena.trainer.train` with no store: its per-step
bookkeeping (loss ``.item()``, divergence check, timing, curve points, optimizer hooks).
``trainer, arena path`` adds what ``optarena arena`` adds around it: a SQLite results
store, a checkpoint (model, optimizer, schedule) every ``steps // 8`` steps (the arena
saves one at each of its 8 evaluations), and a callback every step (the arena's progress
bar and heartbeat). Curves reach the store at evaluations, here only at the end, outside
the timed window; in the arena that is one insert of ``steps // 8`` rows per evaluation.

**Evaluation is excluded from all loops**: each is timed from the end of step 1 to the end
of step ``steps - 1`` (setup, the first step and the evaluations at step 0 and at the end
fall outside; the trainer evaluates nowhere else here). Two clocks: wall time, and the
process's CPU time, which on a shared machine is the steadier of the two (one thread, so
CPU seconds are the work done). Loops are interleaved (the order rotates each repeat) and
repeated; the best repeat (the least disturbed, as ``timeit`` takes) and the median are
reported, ratios from the best (on a shared machine the medians move between runs).
All loops end at bit-identical training losses, which checks that they did the same work.
Usage::

    python benchmarks/harness_overhead.py               # 150 steps x 15 repeats, one thread
    python benchmarks/harness_overhead.py --steps 400 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import torch

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, train
from optarena.arena.workloads import get_workload
from optarena.optim import create_optimizer
from optarena.schedules import as_lambda_lr, make_schedule


class Window:
    """Wall and CPU clocks read at the end of step 1 and of step ``steps - 1``."""

    def __init__(self, steps: int) -> None:
        self.steps, self.marks = steps, {}

    def __call__(self, done: int, total: int = 0) -> None:
        if done in (1, self.steps - 1):
            self.marks[done] = (time.perf_counter(), time.process_time())

    def rates(self) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second) inside the window."""
        (w0, c0), (w1, c1) = self.marks[1], self.marks[self.steps - 1]
        n = self.steps - 2
        return n / (w1 - w0), n / (c1 - c0)


def bare_loop(steps: int, lr: float, window: Callable[[int], None]) -> float:
    """A hand-written loop doing the trainer's work; returns the last training loss."""
    torch.manual_seed(0)
    task = get_workload("lm").build("tiny", 0)
    model = task.model
    optimizer = create_optimizer("adamw", model, lr=lr)
    scheduler = as_lambda_lr(optimizer, make_schedule("cosine", steps, round(0.05 * steps)))
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    task.evaluate(model)  # the loss at initialisation, as the trainer logs it (outside the timed window)
    model.train()
    for step in range(steps):
        loss = task.loss(model, task.train_batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        window(step + 1)
    return loss.item()


def trainer_loop(steps: int, lr: float, window: Callable[[int, int], None], arena_dir: str | None) -> float:
    """The trainer on the same work; ``arena_dir``: with a store and checkpoints there, as the arena runs it."""
    config = RunConfig(workload="lm", scale="tiny", optimizer="adamw", hparams={"lr": lr}, steps=steps,
                       eval_every=steps, seed=0)
    if arena_dir is None:
        result = train(config, on_step=window)
    else:
        progress = []

        def on_step(done: int, total: int) -> None:
            progress.append(done)  # stands for the CLI's progress bar and the heartbeat
            window(done, total)

        result = train(config, ResultStore(f"sqlite:///{arena_dir}/results.db"), checkpoint_dir=f"{arena_dir}/ckpt",
                       checkpoint_every=max(1, steps // 8), on_step=on_step)
    if result.status != "ok":
        raise SystemExit(f"trainer run {result.status}: {result.error}")
    return result.final_train_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.steps < 4:
        raise SystemExit(f"--steps must be >= 4, got {args.steps}")
    torch.set_num_threads(1)
    lr = 1e-3
    print(f"# harness_overhead: lm tiny, adamw, {args.steps} steps x {args.repeats} repeats, 1 thread, "
          f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    names = ("bare loop", "trainer", "trainer, arena path")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="optarena-bench-") as tmp:
        bare_loop(20, lr, Window(20))  # warm up the allocator and kernels
        for repeat in range(args.repeats):
            for name in names[repeat % 3:] + names[: repeat % 3]:  # rotate: no loop always runs first
                window = Window(args.steps)
                if name == "bare loop":
                    losses[name] = bare_loop(args.steps, lr, window)
                else:
                    arena_dir = f"{tmp}/arena{repeat}" if "arena" in name else None
                    losses[name] = trainer_loop(args.steps, lr, window, arena_dir)
                steps_per_wall, steps_per_cpu = window.rates()
                wall[name].append(steps_per_wall)
                cpu[name].append(steps_per_cpu)
    base_cpu, base_wall = max(cpu["bare loop"]), max(wall["bare loop"])
    print("| loop | steps/CPU-s best | median | best vs bare | steps/s wall best | median | best vs bare |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        c, w = max(cpu[name]), max(wall[name])
        print(f"| {name} | {c:.2f} | {statistics.median(cpu[name]):.2f} | {c / base_cpu - 1:+.1%} | {w:.2f} | "
              f"{statistics.median(wall[name]):.2f} | {w / base_wall - 1:+.1%} |")
    same = len(set(losses.values())) == 1
    print(f"identical final training loss in all loops: {same} ({losses['bare loop']:.6f}); "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
