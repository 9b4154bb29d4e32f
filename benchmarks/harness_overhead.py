"""Harness overhead: the arena trainer's steps/second on ``lm`` tiny vs a bare hand-written loop.

Both do the same work: the same model and batches (``lm`` tiny, seed 0), AdamW with the
registry defaults and parameter groups, the cosine schedule with 5% warmup through the
same ``LambdaLR``, global-norm clipping at 1.0, ``zero_grad(set_to_none=True)``. The bare
loop is what one would write by hand: batch, forward, backward, clip, step, zero_grad,
schedule, nothing else. The trainer adds per-step bookkeeping (loss ``.item()``,
divergence check, timing, curve points, optimizer hooks) and, in the "store" variant,
writes its curve to a SQLite results store as the arena does.

**Evaluation is excluded from both**: the trainer's steps/second is ``steps / (wall - eval)``
from its own timing record (its wall clock starts after setup), the bare loop's is timed
around the step loop only. Variants are interleaved and repeated; medians are reported.
Both runs end at bit-identical training losses, which checks that they did the same work.
Usage::

    python benchmarks/harness_overhead.py               # 200 steps x 5 repeats, one thread
    python benchmarks/harness_overhead.py --steps 400 --repeats 7 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time

import torch

from optarena.arena.store import ResultStore
from optarena.arena.trainer import RunConfig, train
from optarena.arena.workloads import get_workload
from optarena.optim import create_optimizer
from optarena.schedules import as_lambda_lr, make_schedule


def bare_loop(steps: int, lr: float) -> tuple[float, float]:
    """(steps per second, last training loss) of a hand-written loop doing the trainer's work."""
    torch.manual_seed(0)
    task = get_workload("lm").build("tiny", 0)
    model = task.model
    optimizer = create_optimizer("adamw", model, lr=lr)
    scheduler = as_lambda_lr(optimizer, make_schedule("cosine", steps, round(0.05 * steps)))
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        loss = task.loss(model, task.train_batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    elapsed = time.perf_counter() - start
    return steps / elapsed, loss.item()


def trainer_loop(steps: int, lr: float, store: ResultStore | None) -> tuple[float, float]:
    config = RunConfig(workload="lm", scale="tiny", optimizer="adamw", hparams={"lr": lr}, steps=steps,
                       eval_every=steps, seed=0)
    result = train(config, store)
    if result.status != "ok":
        raise SystemExit(f"trainer run {result.status}: {result.error}")
    return steps / (result.timing["wall"] - result.timing["eval"]), result.final_train_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lr = 1e-3
    print(f"# harness_overhead: lm tiny, adamw, {args.steps} steps x {args.repeats} repeats, "
          f"{args.threads} thread(s), torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    rates: dict[str, list[float]] = {"bare loop": [], "trainer": [], "trainer + SQLite store": []}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="optarena-bench-") as tmp:
        bare_loop(20, lr)  # warm up allocator and kernels
        for repeat in range(args.repeats):
            for name in rates:
                if name == "bare loop":
                    rate, loss = bare_loop(args.steps, lr)
                else:
                    store = ResultStore(f"sqlite:///{tmp}/r{repeat}.db") if "store" in name else None
                    rate, loss = trainer_loop(args.steps, lr, store)
                rates[name].append(rate)
                losses[name] = loss
    base = statistics.median(rates["bare loop"])
    print("| loop | steps/s (median) | min-max | vs bare loop |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f}-{max(values):.1f} | {median / base - 1:+.1%} |")
    same = len({round(v, 12) for v in losses.values()}) == 1 and all(math.isfinite(v) for v in losses.values())
    print(f"identical final training loss in all loops: {same} ({losses['bare loop']:.6f}); "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
