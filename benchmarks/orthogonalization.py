"""Orthogonality error against FLOPs: Newton–Schulz (Keller's quintic) and its Gram-space variant.

The matrices are real gradients of the ``lm`` transformer at d_model=512 (one batch of
Shakespeare bytes): the MLP matrices (512 x 2048 and 2048 x 512) and the attention
matrices (512 x 512). For each method and number of steps the table shows the matmul
FLOPs per matrix, the orthogonality error (RMS distance to the exact polar factor
``U V^T``, and ``max |sigma_i - 1|``) averaged over the matrices of that shape, and the
best-of-3 wall time. The Gram variant (``ns_method="gram"``) iterates the same
polynomial on the small ``m x m`` Gram matrix, so it reaches the same error as 5-step
Newton–Schulz (up to fp32 rounding) with fewer FLOPs on rectangular matrices.

``--train`` then trains the ``lm`` workload twice with fp32 Newton–Schulz, plain and Gram,
same seed and data, and prints both validation losses: does training quality hold?

Usage::

    python benchmarks/orthogonalization.py
    python benchmarks/orthogonalization.py --train --train-steps 200
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from optarena.arena.workloads.lm import LMWorkload
from optarena.optim import create_optimizer, partition_parameters
from optarena.optim.orthogonalize import (
    gram_newton_schulz, gram_newton_schulz_flops, newton_schulz, newton_schulz_flops, polar_factor,
)


def real_gradients(d_model: int) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Hidden-matrix gradients of one backward pass of the lm transformer, grouped by shape."""
    task = LMWorkload().build("tiny", seed=0, d_model=d_model, n_layer=2, head_dim=64, batch_size=8, seq_len=128)
    task.loss(task.model, task.train_batch(0)).backward()
    shapes: dict[tuple[int, int], list[torch.Tensor]] = {}
    for _, p in partition_parameters(task.model).hidden:
        G = p.grad.reshape(p.shape[0], -1).double()
        shapes.setdefault(tuple(G.shape), []).append(G)
    return shapes


def errors(outputs: list[torch.Tensor], refs: list[torch.Tensor]) -> tuple[float, float]:
    rms, worst = 0.0, 0.0
    for O, R in zip(outputs, refs):
        O = O.double()
        rms += float(torch.linalg.matrix_norm(O - R) / math.sqrt(min(O.shape)))
        worst += float((torch.linalg.svdvals(O) - 1).abs().max())
    return rms / len(outputs), worst / len(outputs)


def best_time(fn, reps: int = 3) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def error_table(d_model: int, max_steps: int) -> None:
    shapes = real_gradients(d_model)
    print(f"# Orthogonality error vs FLOPs on gradients of the lm transformer (d_model={d_model}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| matrix | method | steps | dtype | GFLOP / matrix | NS5 FLOPs / these | RMS error to UV^T | "
          "max abs(sigma - 1) | time / matrix (ms) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    summary = []
    for (m, n), grads in shapes.items():
        grads = grads[:4]
        refs = [polar_factor(G) for G in grads]
        ns5 = newton_schulz_flops(m, n, 5)
        rows = [("newton_schulz", k, torch.float32) for k in range(2, max_steps + 1)]
        rows += [("newton_schulz", 5, torch.bfloat16)]
        rows += [("gram", k, torch.float32) for k in (3, 4, 5, 6)]
        results = {}
        for method, steps, dtype in rows:
            fn, count = (gram_newton_schulz, gram_newton_schulz_flops) if method == "gram" else (
                newton_schulz, newton_schulz_flops)
            inputs = [G.float() for G in grads]
            outputs = [fn(G, steps=steps, dtype=dtype) for G in inputs]
            rms, worst = errors(outputs, refs)
            seconds = best_time(lambda: [fn(G, steps=steps, dtype=dtype) for G in inputs]) / len(inputs)
            flops = count(m, n, steps)
            results[(method, steps, dtype)] = rms
            print(f"| {m} x {n} | {method} | {steps} | {str(dtype).replace('torch.', '')} | {flops / 1e9:.2f} | "
                  f"{ns5 / flops:.2f}x | {rms:.4f} | {worst:.3f} | {1e3 * seconds:.1f} |")
        gap = abs(results[("gram", 5, torch.float32)] - results[("newton_schulz", 5, torch.float32)])
        summary.append(f"{m} x {n}: Gram NS5 error - NS5 error = {gap:.1e}, "
                       f"with {ns5 / gram_newton_schulz_flops(m, n, 5):.2f}x fewer FLOPs")
    print("\n" + "\n".join(f"- {line}" for line in summary))


def train_check(steps: int, d_model: int) -> None:
    print(f"\n# Training quality: lm (d_model={d_model}), {steps} steps, Muon with fp32 Newton–Schulz, same seed")
    print("\n| ns_method | validation loss (nats/byte) | optimizer time (s) |")
    print("|---|---:|---:|")
    for method in ("newton_schulz", "gram"):
        task = LMWorkload().build("tiny", seed=0, d_model=d_model, batch_size=16, seq_len=64, eval_windows=128)
        opt = create_optimizer("muon", task.model, ns_method=method)
        for group in opt.param_groups:
            group["ns_dtype"] = torch.float32
        spent = 0.0
        for step in range(steps):
            opt.zero_grad()
            task.loss(task.model, task.train_batch(step)).backward()
            start = time.perf_counter()
            opt.step()
            spent += time.perf_counter() - start
        print(f"| {method} | {task.evaluate(task.model)['loss']:.4f} | {spent:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--max-steps", type=int, default=7)
    parser.add_argument("--train", action="store_true", help="also compare training with plain vs Gram NS")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--train-d-model", type=int, default=128)
    args = parser.parse_args()
    error_table(args.d_model, args.max_steps)
    if args.train:
        train_check(args.train_steps, args.train_d_model)


if __name__ == "__main__":
    main()
