"""Muon step time on a ~25M-parameter transformer, against its peers, and Newton–Schulz throughput.

Every contender updates the same split of the same parameters (the ``lm`` workload's
transformer at d_model=512, 8 layers: hidden matrices get Muon, embeddings / readout /
norm gains get AdamW) with the same fixed random gradients:

- ``optarena muon``: ``create_optimizer("muon", model)``, one object (default NS dtype);
- ``torch.optim.Muon + AdamW``: two torch optimizers on the same split;
- ``pytorch-optimizer Muon``: its ``use_muon`` groups (AdamW built in);
- ``heavyball Muon + AdamW``: when heavyball is installed (its NS uses other coefficients).

Then Newton–Schulz alone on the hidden matrices (our batched chain and torch's per-matrix
function), with FLOPs counted (``newton_schulz_flops``) and divided by this machine's
measured matmul throughput in the same dtype: a large square GEMM (the "peak") and the
very matmul shapes Newton–Schulz runs (the "same shapes" column, no epilogues or norms).
Last, the optimizer-state bytes per parameter actually allocated.

Usage::

    python benchmarks/muon_step.py
    python benchmarks/muon_step.py --steps 12 --warmup 2
    python benchmarks/muon_step.py --steps 10 --fp32
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from typing import Any, Callable

import torch

from optarena.arena.workloads.lm import ByteTransformer, LMConfig
from optarena.optim import create_optimizer, partition_parameters
from optarena.optim.orthogonalize import newton_schulz_flops, orthogonalize_many, resolve_ns_dtype


def build_model(d_model: int, n_layer: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ByteTransformer(LMConfig(d_model=d_model, n_layer=n_layer, head_dim=64, seq_len=256))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def split(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    part = partition_parameters(model)
    hidden = [p for _, p in part.hidden]
    rest = [p for _, p in part.embedding + part.readout + part.vector]
    return hidden, rest


def contenders(args: argparse.Namespace) -> dict[str, Callable[[torch.nn.Module], Callable[[], None]]]:
    def ours(ns_dtype: torch.dtype | None = None, **kw: Any) -> Callable[[torch.nn.Module], Callable[[], None]]:
        def make(model: torch.nn.Module) -> Callable[[], None]:
            opt = create_optimizer("muon", model, lr=0.02, weight_decay=0.01, **kw)
            for group in opt.param_groups:  # ns_dtype is a constructor option the registry does not tune
                group["ns_dtype"] = ns_dtype
            return opt.step
        return make

    def torch_pair(model: torch.nn.Module) -> Callable[[], None]:
        hidden, rest = split(model)
        muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.01)
        adamw = torch.optim.AdamW(rest, lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0, foreach=True)

        def step() -> None:
            muon.step()
            adamw.step()
        return step

    def pytorch_optimizer_muon(model: torch.nn.Module) -> Callable[[], None]:
        from pytorch_optimizer import Muon

        hidden, rest = split(model)
        return Muon([{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}],
                    lr=0.02, weight_decay=0.01, adamw_lr=3e-3).step

    def heavyball_pair(model: torch.nn.Module) -> Callable[[], None]:
        import heavyball

        hidden, rest = split(model)
        muon = heavyball.Muon(hidden, lr=0.02, weight_decay=0.01)
        adamw = torch.optim.AdamW(rest, lr=3e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0, foreach=True)

        def step() -> None:
            muon.step()
            adamw.step()
        return step

    table = {
        "optarena muon": ours(),
        "torch.optim.Muon + AdamW": torch_pair,
        "pytorch-optimizer Muon": pytorch_optimizer_muon,
        "heavyball Muon + AdamW": heavyball_pair,
    }
    if args.fp32:
        table["optarena muon, fp32 NS"] = ours(torch.float32)
        table["optarena muon, fp32 Gram NS"] = ours(torch.float32, ns_method="gram")
    return table


def time_round_robin(makers: dict[str, Callable[[torch.nn.Module], Callable[[], None]]], base: torch.nn.Module,
                     steps: int, warmup: int) -> dict[str, Any]:
    """Build every contender on its own copy, then time them in turns (A B C A B C ...), so that noise
    from other processes on a shared machine spreads over all of them; returns per-name step times."""
    steppers: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {}

    def refill(model: torch.nn.Module) -> None:  # some peers (heavyball) consume .grad: give every step one
        for p, q in zip(model.parameters(), base.parameters()):
            p.grad = q.grad.clone()

    for name, make in makers.items():
        models[name] = copy.deepcopy(base)
        refill(models[name])
        try:
            steppers[name] = make(models[name])
            for _ in range(warmup):
                refill(models[name])
                steppers[name]()
        except Exception as err:  # a missing peer library is a row, not a crash
            steppers[name] = f"not run: {type(err).__name__}: {str(err)[:60]}"
    times: dict[str, Any] = {n: ([] if callable(s) else s) for n, s in steppers.items()}
    for _ in range(steps):
        for name, step in steppers.items():
            if callable(step):
                refill(models[name])
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return times


def ns_throughput(hidden: list[torch.Tensor], dtype: torch.dtype, reps: int) -> dict[str, float]:
    """Best-of-``reps`` times (in turns) of: our batched Newton–Schulz, torch.optim.Muon's per-matrix
    function (bf16 only), exactly the matmuls Newton–Schulz runs (X X^T, A A, B X per step, batched
    per shape, no epilogues or normalisation), and a 2048^3 GEMM (the machine's peak)."""
    mats = [torch.randn_like(p).reshape(p.shape[0], -1) for p in hidden]
    flops = sum(newton_schulz_flops(*M.shape) for M in mats)
    shapes: dict[tuple[int, int], int] = {}
    for M in mats:
        key = (min(M.shape), max(M.shape))
        shapes[key] = shapes.get(key, 0) + 1
    operands = {key: (torch.randn(count, key[0], key[1]).to(dtype), torch.randn(count, key[0], key[0]).to(dtype))
                for key, count in shapes.items()}

    def same_shapes() -> None:
        for X, A in operands.values():
            for _ in range(5):
                torch.bmm(X, X.mT)
                torch.bmm(A, A)
                torch.bmm(A, X)

    square = torch.randn(2048, 2048).to(dtype)
    jobs: dict[str, Callable[[], Any]] = {
        "ours_s": lambda: orthogonalize_many(mats, dtype=dtype),
        "same_shapes_s": same_shapes,
        "peak_s": lambda: square @ square,
    }
    if dtype == torch.bfloat16:  # torch.optim.Muon's Newton–Schulz is bf16 only
        from torch.optim._muon import _zeropower_via_newtonschulz

        jobs["torch_s"] = lambda: [_zeropower_via_newtonschulz(M, (3.4445, -4.7750, 2.0315), 5, 1e-7) for M in mats]
    best = {key: math.inf for key in jobs}
    for key, job in jobs.items():
        job()
    for _ in range(reps):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            best[key] = min(best[key], time.perf_counter() - start)
    return {"flops": flops, **best, "peak": 2 * 2048**3 / best["peak_s"]}


def state_bytes(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    ids = {id(p) for p in params}
    total = 0
    for p, state in opt.state.items():
        if id(p) in ids:
            total += sum(v.numel() * v.element_size() for k, v in state.items() if torch.is_tensor(v) and k != "step")
    return total / sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fp32", action="store_true", help="also time our Muon with fp32 (and fp32 Gram) NS")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    base = build_model(args.d_model, args.n_layer)
    hidden, rest = split(base)
    n_hidden, n_rest = sum(p.numel() for p in hidden), sum(p.numel() for p in rest)
    ns_dtype = resolve_ns_dtype(hidden[0], None)
    print(f"# Muon step: d_model={args.d_model}, n_layer={args.n_layer}: {(n_hidden + n_rest) / 1e6:.1f}M parameters "
          f"({n_hidden / 1e6:.1f}M in {len(hidden)} hidden matrices), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, our default NS dtype {ns_dtype}")
    print("\n| optimizer (same split, same gradients) | median step (s) | best step (s) | best vs optarena |")
    print("|---|---:|---:|---:|")
    makers = contenders(args)
    fast = {n: m for n, m in makers.items() if "fp32" not in n}
    results = time_round_robin(fast, base, args.steps, args.warmup)
    if len(fast) < len(makers):  # the fp32 rows are far slower on CPUs with native bf16: fewer steps
        results.update(time_round_robin({n: m for n, m in makers.items() if n not in fast}, base, 2, 1))
    reference = min(results["optarena muon"])
    for name, times in results.items():
        if isinstance(times, str):
            print(f"| {name} | {times} | | |")
            continue
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {min(times) / reference:.2f}x |")

    print("\n| Newton–Schulz on all hidden matrices | dtype | GFLOP | time (s) | GFLOP/s | "
          "% of peak GEMM | % of same-shape matmuls |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float32):
        t = ns_throughput(hidden, dtype, reps=2 if dtype == torch.float32 else 5)
        for label, key in (("optarena (batched)", "ours_s"), ("torch.optim.Muon's function", "torch_s")):
            if key not in t:
                continue
            rate = t["flops"] / t[key]
            same = t["flops"] / t["same_shapes_s"]
            print(f"| {label} | {str(dtype).replace('torch.', '')} | {t['flops'] / 1e9:.0f} | {t[key]:.3f} | "
                  f"{rate / 1e9:.0f} | {100 * rate / t['peak']:.0f}% | {100 * rate / same:.0f}% |")
        print(f"| (peak square GEMM {t['peak'] / 1e9:.0f} GFLOP/s; same-shape matmuls "
              f"{t['flops'] / t['same_shapes_s'] / 1e9:.0f} GFLOP/s) | {str(dtype).replace('torch.', '')} | | | | | |")

    print("\n| optimizer | state bytes / hidden-matrix parameter | state bytes / other parameter |")
    print("|---|---:|---:|")
    for name, kw in (("muon", {}), ("namo", {}), ("namo_d", {}), ("frugal", dict(projection="blockwise")),
                     ("frugal", dict(projection="svd")), ("frugal", dict(projection="randperm"))):
        model = copy.deepcopy(base)
        for p, q in zip(model.parameters(), base.parameters()):
            p.grad = q.grad.clone()
        opt = create_optimizer(name, model, **kw)
        opt.step()
        h, r = split(model)
        label = name + (f" ({kw['projection']}, density 0.25)" if kw else "")
        print(f"| {label} | {state_bytes(opt, h):.2f} | {state_bytes(opt, r):.2f} |")


if __name__ == "__main__":
    main()
