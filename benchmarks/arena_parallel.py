"""Arena throughput: a fixed set of trials with one worker vs ``--workers N``, one torch thread each.

Runs the same ``optarena arena`` command (random search, so every trial is known up front
and the set of runs is identical) into fresh output directories, first with one worker,
then with ``--workers N``, each as a new process with ``OMP_NUM_THREADS=1`` (the parallel
workers set one thread themselves; the single worker gets the same through the
environment). The wall time covers the whole command: interpreter start, imports,
starting the extra workers, training, the report. It checks that both produced the same
runs with bit-identical final losses, then prints the speedup, and the CPU seconds all
processes used divided by the wall time: the cores the machine actually gave us. Before
that it calibrates: N plain busy-loop processes for 3 s, whose CPU seconds per wall second
are the most any N workers could get right now (on a shared machine, often fewer than N).
Usage::

    python benchmarks/arena_parallel.py                      # lm tiny, 2 optimizers x 8 trials x 250 steps
    python benchmarks/arena_parallel.py --workers 2 --trials 12 --steps 200
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from optarena.cli import app; app()"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant, workers included
    return usage.ru_utime + usage.ru_stime


def run_arena(out: Path, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one arena command."""
    command = CLI + [
        "arena", "--workloads", args.workload, "--optimizers", args.optimizers, "--protocol", "random",
        "--trials", str(args.trials), "--seeds", "1", "--steps", str(args.steps), "--out", str(out),
        "--workers", str(workers),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"arena with {workers} worker(s) failed:\n{done.stdout}\n{done.stderr}")
    return wall, cpu


def cores_available(processes: int, seconds: float = 3.0) -> float:
    """CPU seconds per wall second that ``processes`` busy loops get right now: the ceiling for as many workers."""
    loop = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    start, cpu = time.perf_counter(), _children_cpu()
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    for process in busy:
        process.wait()
    return (_children_cpu() - cpu) / (time.perf_counter() - start)


def outcomes(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.db") as db:
        return sorted(db.execute("select key, status, final_eval_loss from optarena_runs").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="lm")
    parser.add_argument("--optimizers", default="adamw,lion")
    parser.add_argument("--trials", type=int, default=8, help="trials per optimizer")
    parser.add_argument("--steps", type=int, default=250, help="the lm tiny default budget")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n_runs = len(args.optimizers.split(",")) * args.trials
    print(f"# arena_parallel: {args.workload}, {args.optimizers}, {args.trials} trials x {args.steps} steps "
          f"= {n_runs} runs; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    ceiling = cores_available(args.workers)
    print(f"calibration: {args.workers} busy-loop processes get {ceiling:.2f} cores on this machine now")
    with tempfile.TemporaryDirectory(prefix="optarena-bench-") as tmp:
        (single, single_cpu) = run_arena(Path(tmp) / "one", 1, args)
        (parallel, parallel_cpu) = run_arena(Path(tmp) / "many", args.workers, args)
        same = outcomes(Path(tmp) / "one") == outcomes(Path(tmp) / "many")
    print("| workers | wall s | runs/min | speedup | CPU s | cores obtained (CPU s / wall s) |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 | {single:.1f} | {60 * n_runs / single:.1f} | 1.00x | {single_cpu:.1f} | {single_cpu / single:.2f} |")
    print(f"| {args.workers} | {parallel:.1f} | {60 * n_runs / parallel:.1f} | {single / parallel:.2f}x | "
          f"{parallel_cpu:.1f} | {parallel_cpu / parallel:.2f} |")
    print(f"identical runs and final losses: {same}; load average {os.getloadavg()[0]:.1f} at the end")
    if not same:
        raise SystemExit("the parallel arena recorded different results")


if __name__ == "__main__":
    main()
