"""Optimizer step time and state memory on a ~25M-parameter transformer's parameter set.

For every registered optimizer (or those named with ``--optimizers``) this measures, in
one run and on one machine:

- the wall time of ``optimizer.step()`` over ``--repeats`` timed steps after ``--warmup``
  untimed ones, best and median (ratios use the best, the usual estimate of a kernel's
  cost on a shared machine), with random gradients restored before each step outside
  the timer (some peers modify gradients in place);
- the optimizer state in bytes per parameter (every tensor in ``optimizer.state``);
- the same with ``fused=True`` where the optimizer has it (compiled or C kernels per
  tensor, see ``optarena.optim.kernels``; the compilation falls in the warm-up steps);
- the same for the same method in pytorch-optimizer (foreach and per-tensor, the faster
  is reported) and for torch's AdamW (foreach, and ``fused=True``) as the baseline;
- the bandwidth bound: the bytes a step must move at least (read parameters, gradients
  and state, write parameters and state: ``2 P + G + 2 S`` bytes per parameter with the
  measured state ``S``; AM-SGD and AM-AdamW add the arrays their inner products force them
  to read twice, ``SECOND_READ_BYTES``), divided by this machine's memory bandwidth. The
  bandwidth is that of an in-place add ``a += b`` over a copy of the same parameter set (12
  bytes per parameter), timed in turns with the row's steps (add, step, add, step, ...), so that each
  row's ratio compares two measurements taken under the same load; the add also evicts the
  step's data from the caches, as a forward and backward pass would. For matrix optimizers
  the bound counts only that elementwise traffic, not their matrix products, so their
  ratio is no measure of efficiency.

No forward pass is run: the model only supplies parameter shapes and names (so the
optimizers build their usual parameter groups). Optimizers that need a forward pass
(MKOR's hooks) or a Hessian pass (Sophia's ``update_hessian``, run every k steps) are
timed on ``step()`` alone. Usage::

    python benchmarks/optimizer_step.py --quick
    python benchmarks/optimizer_step.py --optimizers lion,adan,adamw --repeats 20 --out results.md
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from optarena.optim import create_optimizer, get_spec, list_optimizers
from optarena.optim.hooks import hooks_of


class ShapeOnlyTransformer(nn.Module):
    """The parameters of a pre-LN decoder (d=512, 6 layers, vocab 6144, untied head): ~25.2M."""

    def __init__(self, vocab: int = 6144, width: int = 512, layers: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.ln1 = nn.LayerNorm(width)
            block.attn_qkv = nn.Linear(width, 3 * width)
            block.attn_proj = nn.Linear(width, width)
            block.ln2 = nn.LayerNorm(width)
            block.mlp_fc = nn.Linear(width, 4 * width)
            block.mlp_proj = nn.Linear(4 * width, width)
            self.blocks.append(block)
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)


class BandwidthProbe:
    """``a += b`` over a copy of the parameter set: the access pattern of an elementwise step.

    It reads two bytes and writes one per byte of ``a`` (12 bytes per float32 parameter);
    :meth:`__call__` returns its time in seconds.
    """

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.a = [torch.zeros_like(p) for p in params]
        self.b = [torch.ones_like(p) for p in params]
        self.bytes = 3 * sum(p.numel() * p.element_size() for p in params)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        for a, b in zip(self.a, self.b):
            a.add_(b)
        return time.perf_counter() - t0


# Bytes per parameter that a method must read twice because its update needs a reduction over
# the whole model (AM-SGD's one beta: g and d) or over each whole tensor (AM-AdamW's beta: theta,
# g, d, v) before any element can be written: once the model's (AM-SGD) or a tensor's (AM-AdamW)
# arrays outgrow the last-level cache, they cross the memory bus twice. They count in the traffic
# and bound of these methods; the note column gives the one-pass figure without them. Row
# reductions (AdamP/SGDP's test, SCALE's rows) fit in the one pass and add nothing.
SECOND_READ_BYTES = {"am_sgd": 8.0, "am_adamw": 16.0}


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


@dataclass
class Row:
    optimizer: str
    implementation: str
    ms: float | None  # best of the timed steps
    median_ms: float | None
    state_bytes: float | None
    traffic_bytes: float | None
    bandwidth: float | None = None  # bytes/s of the probe timed in turns with this row's steps
    note: str = ""


def time_steps(make: Callable[[list[torch.nn.Parameter]], Any], model: nn.Module, grads: list[torch.Tensor],
               warmup: int, repeats: int, probe: BandwidthProbe, first_step_kwargs: dict[str, Any] | None = None
               ) -> tuple[float, float, int, float]:
    """Best and median ms of optimizer.step(), the state bytes afterwards, and the probe's best bandwidth.

    Each timed step follows one run of the bandwidth probe; gradients are restored untimed.
    """
    params = list(model.parameters())
    optimizer = make(params)
    if callable(getattr(optimizer, "train", None)):
        optimizer.train()
    times, probe_times = [], []
    for i in range(warmup + repeats):
        if i >= warmup:
            probe_times.append(probe())
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        t0 = time.perf_counter()
        hooks_of(optimizer).prepare_step()
        optimizer.step(**(first_step_kwargs or {})) if i == 0 else optimizer.step()
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    size = state_bytes(optimizer)
    del optimizer
    gc.collect()
    return min(times) * 1e3, statistics.median(times) * 1e3, size, probe.bytes / min(probe_times)


def peers(name: str) -> list[tuple[str, Callable[[list[torch.nn.Parameter]], Any], dict[str, Any] | None]]:
    """Peer implementations of the registered method ``name`` with its registry defaults mapped."""
    spec = get_spec(name)
    d = dict(spec.defaults)
    out: list[tuple[str, Callable, dict | None]] = []
    try:
        import pytorch_optimizer as po
    except ImportError:
        return out

    def both(label: str, factory: Callable[..., Any], **kw: Any) -> None:
        for foreach in (True, False):
            out.append((f"{label} (foreach={foreach})", lambda p, f=foreach: factory(p, foreach=f, **kw), None))

    if name == "lion":
        both("pytorch-optimizer Lion", po.Lion, lr=d["lr"], betas=d["betas"], weight_decay=d["weight_decay"])
    elif name == "adan":
        both("pytorch-optimizer Adan", po.Adan, lr=d["lr"], betas=d["betas"], eps=d["eps"],
             weight_decay=d["weight_decay"], weight_decouple=d["no_prox"])
    elif name == "adamp":
        both("pytorch-optimizer AdamP", po.AdamP, lr=d["lr"], betas=d["betas"], eps=d["eps"],
             weight_decay=d["weight_decay"], delta=d["delta"], wd_ratio=d["wd_ratio"])
    elif name == "sgdp":
        both("pytorch-optimizer SGDP", po.SGDP, lr=d["lr"], momentum=d["momentum"], nesterov=d["nesterov"],
             weight_decay=d["weight_decay"], delta=d["delta"], wd_ratio=d["wd_ratio"])
    elif name == "schedule_free_adamw":
        both("pytorch-optimizer ScheduleFreeAdamW", po.ScheduleFreeAdamW, lr=d["lr"], betas=d["betas"],
             eps=d["eps"], weight_decay=d["weight_decay"], warmup_steps=d["warmup_steps"])
    elif name == "sophia_h":
        # the first step gets a (zero) Hessian so po does not need a create_graph backward; later
        # steps skip the refresh (update_period is large), as ours does between refreshes
        for foreach in (True, False):
            out.append((f"pytorch-optimizer SophiaH (foreach={foreach})",
                        lambda p, f=foreach: po.SophiaH(p, lr=d["lr"] / d["rho"], p=d["rho"], betas=d["betas"],
                                                        weight_decay=d["weight_decay"] * d["rho"],
                                                        update_period=10**9, foreach=f),
                        "hessian"))
    return out


def run(names: list[str], warmup: int, repeats: int) -> tuple[list[Row], dict[str, Any]]:
    torch.manual_seed(0)
    model = ShapeOnlyTransformer()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    grads = [torch.randn_like(p) for p in params]
    for p in params:
        p.grad = torch.empty_like(p)
    probe = BandwidthProbe(params)
    param_bytes = sum(p.numel() * p.element_size() for p in params) / n_params
    rows: list[Row] = []

    def record(label: str, impl: str, make: Callable, first_kwargs: dict | None = None, note: str = "") -> None:
        with torch.no_grad():
            snapshot = [p.detach().clone() for p in params]
        try:
            best, median, size, bandwidth = time_steps(make, model, grads, warmup, repeats, probe, first_kwargs)
            per = size / n_params
            traffic = 3 * param_bytes + 2 * per + SECOND_READ_BYTES.get(label, 0.0)
            rows.append(Row(label, impl, best, median, per, traffic, bandwidth, note))
        except Exception as exc:  # one optimizer failing must not stop the table
            rows.append(Row(label, impl, None, None, None, None, f"error: {type(exc).__name__}: {exc}"[:90]))
        with torch.no_grad():  # every run starts from the same parameters
            for p, s in zip(params, snapshot):
                p.copy_(s)

    record("torch AdamW", "torch.optim.AdamW(foreach=True)",
           lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, foreach=True))
    record("torch AdamW", "torch.optim.AdamW(fused=True)",
           lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, fused=True))
    for name in names:
        spec = get_spec(name)
        note = "" if spec.family == "elementwise" else f"{spec.family}: bound counts elementwise traffic only"
        record(name, "optarena", lambda p, n=name: create_optimizer(n, model), note=note)
        if "fused" in inspect.signature(spec.cls.__init__).parameters:
            # torch's own classes refuse fused=True together with the registry's foreach=True
            extra = {"foreach": False} if spec.cls.__module__.startswith("torch.") else {}
            record(name, "optarena (fused=True)",
                   lambda p, n=name, kw=extra: create_optimizer(n, model, fused=True, **kw), note=note)
        for label, make, first in peers(name):
            first_kwargs = None
            if first == "hessian":
                first_kwargs = {"hessian": [torch.zeros_like(p) for p in params]}
            record(name, label, make, first_kwargs)
    info = dict(params=n_params, threads=torch.get_num_threads(), torch=torch.__version__,
                machine=f"{platform.machine()} {platform.processor() or ''}".strip(), warmup=warmup, repeats=repeats)
    return rows, info


def to_markdown(rows: list[Row], info: dict[str, Any]) -> str:
    bandwidths = [r.bandwidth for r in rows if r.bandwidth is not None] or [math.nan]
    fastest_peer: dict[str, float] = {}
    for r in rows:
        if not r.implementation.startswith("optarena") and r.ms is not None and not r.optimizer.startswith("torch"):
            fastest_peer[r.optimizer] = min(fastest_peer.get(r.optimizer, math.inf), r.ms)
    lines = [
        f"{info['params'] / 1e6:.1f}M parameters (fp32), torch {info['torch']}, {info['threads']} threads, "
        f"{info['machine']}; best and median of {info['repeats']} steps after {info['warmup']} warm-up. Memory "
        f"bandwidth (in-place add over the parameter set, timed in turns with each row's steps, best per row): "
        f"{min(bandwidths) / 1e9:.1f}-{max(bandwidths) / 1e9:.1f} GB/s, median {statistics.median(bandwidths) / 1e9:.1f}.",
        "",
        "| optimizer | implementation | best ms | median ms | state B/param | traffic B/param | GB/s | bound ms "
        "| x bound | x fastest peer | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.ms is None:
            lines.append(f"| {r.optimizer} | {r.implementation} | — | — | — | — | — | — | — | — | {r.note} |")
            continue
        bw = r.bandwidth
        bound_ms = r.traffic_bytes * info["params"] / bw * 1e3
        peer = fastest_peer.get(r.optimizer)
        vs_peer = f"{r.ms / peer:.2f}" if peer and r.implementation.startswith("optarena") else ""
        note = r.note
        if r.optimizer in SECOND_READ_BYTES:
            extra = SECOND_READ_BYTES[r.optimizer]
            one_pass_ms = (r.traffic_bytes - extra) * info["params"] / bw * 1e3
            note = f"incl. {extra:.0f} B read twice; one-pass bound {one_pass_ms:.1f} ms: {r.ms / one_pass_ms:.2f}x"
        lines.append(f"| {r.optimizer} | {r.implementation} | {r.ms:.1f} | {r.median_ms:.1f} | {r.state_bytes:.2f} | "
                     f"{r.traffic_bytes:.1f} | {bw / 1e9:.1f} | {bound_ms:.1f} | {r.ms / bound_ms:.2f} | {vs_peer} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default="", help="comma-separated registry names (default: all)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per optimizer (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (state allocation)")
    parser.add_argument("--quick", action="store_true", help="5 timed steps after 1 warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] or list_optimizers()
    for n in names:
        get_spec(n)  # unknown names fail before any timing
    warmup, repeats = (1, 5) if args.quick else (args.warmup, args.repeats)
    rows, info = run(names, warmup, repeats)
    table = to_markdown(rows, info)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
