"""Does the optimal learning rate transfer across width under muP?

1. Learning-rate sweeps (factor-2 grid) of AdamW and Muon on ``lm`` at three widths (x4 range),
   standard parametrisation vs muP (base = the smallest width); reports each width's optimal lr
   and the drift of the optimum across widths in grid steps.
2. The LR sensitivity of Wortsman et al. (arXiv:2309.14322) of AdamW with and without qk-layernorm
   + z-loss (1e-4).

Every run goes through the arena's trainer and a results database, so an interrupted study
resumes where it stopped. Writes a markdown summary and PNG plots into ``--out``.

    python benchmarks/scaling_study.py --out benchmarks/results/scaling
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from optarena.arena.store import ResultStore  # noqa: E402
from optarena.arena.trainer import RunConfig, train  # noqa: E402
from optarena.diagnostics.stability import lr_sensitivity  # noqa: E402

GRIDS = {  # factor-2 grids, wide enough to bracket the optimum at every width
    "adamw": [2.0**k for k in range(-11, -4)],
    "muon": [2.0**k for k in range(-8, -1)],
}
SENSITIVITY_LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def sweep(store: ResultStore, optimizer: str, parametrization: str, width: int, base_width: int, steps: int,
          extra: dict | None = None) -> dict[float, float]:
    """Final eval loss for every lr of the grid (inf for diverged runs)."""
    out = {}
    for lr in GRIDS[optimizer]:
        config = RunConfig(
            workload="lm", scale="tiny", optimizer=optimizer, hparams={"lr": lr}, steps=steps, schedule="cosine",
            eval_every=steps, workload_options={"d_model": width, **(extra or {})},
            parametrization=parametrization, mup_base_width=base_width if parametrization == "mup" else None,
        )
        t0 = time.perf_counter()
        result = train(config, store)
        loss = result.final_eval_loss if result.final_eval_loss is not None else math.inf
        out[lr] = loss
        print(f"{optimizer:6s} {parametrization:8s} width {width:4d} lr {lr:.2e}: {result.status:8s} {loss:.4f}"
              f"{' (reused)' if result.reused else f'  {time.perf_counter() - t0:.0f}s'}", flush=True)
    return out


def best_lr(results: dict[float, float]) -> float:
    return min(results, key=lambda lr: (results[lr], lr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling"))
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizers", default="adamw,muon")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(f"sqlite:///{(args.out / 'study.db').resolve()}")
    widths = [int(w) for w in args.widths.split(",")]
    base = widths[0]
    lines = [f"lm, {args.steps} steps, cosine schedule, widths {widths}, muP base width {base}, "
             "factor-2 lr grid; final eval loss (nats/byte).", ""]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    for row, optimizer in enumerate(args.optimizers.split(",")):
        lines += [f"### {optimizer}", "", "| parametrization | " + " | ".join(f"width {w}: best lr (loss)" for w in widths)
                  + " | optimum drift (grid steps) |", "|---|" + "---|" * (len(widths) + 1)]
        for col, parametrization in enumerate(("standard", "mup")):
            ax = axes[row][col]
            optima = []
            for width in widths:
                results = sweep(store, optimizer, parametrization, width, base, args.steps)
                lr = best_lr(results)
                optima.append((lr, results[lr]))
                finite = sorted((k, v) for k, v in results.items() if math.isfinite(v))
                ax.plot([k for k, _ in finite], [v for _, v in finite], "o-", ms=3, label=f"width {width}")
                ax.plot([lr], [results[lr]], "k*", ms=9)
            drift = round(math.log2(max(o[0] for o in optima) / min(o[0] for o in optima)))
            lines.append(f"| {parametrization} | " + " | ".join(f"{lr:.2e} ({loss:.4f})" for lr, loss in optima)
                         + f" | {drift} |")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{optimizer}, {parametrization}")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("final eval loss")
            finite_all = [line.get_ydata() for line in ax.get_lines()]
            low = min(min(y) for y in finite_all)
            ax.set_ylim(low - 0.05, low + 1.0)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, which="both")
        lines.append("")
    fig.suptitle("Optimal learning rate across width: standard vs muP (stars: optimum per width)")
    fig.tight_layout()
    fig.savefig(args.out / "lr_transfer.png", dpi=110)
    plt.close(fig)

    lines += ["### LR sensitivity (Wortsman et al.), AdamW, width 64", "",
              "| variant | " + " | ".join(f"lr {lr:g}" for lr in SENSITIVITY_LRS) + " | LR sensitivity |",
              "|---|" + "---|" * (len(SENSITIVITY_LRS) + 1)]
    variants = {"plain": {}, "qk-layernorm + z-loss 1e-4": {"qk_layernorm": True, "z_loss": 1e-4}}
    for label, extra in variants.items():
        results = {}
        for lr in SENSITIVITY_LRS:
            config = RunConfig(workload="lm", scale="tiny", optimizer="adamw", hparams={"lr": lr}, steps=args.steps,
                               eval_every=args.steps, workload_options={"d_model": 64, **extra})
            result = train(config, store)
            results[lr] = result.final_eval_loss if result.final_eval_loss is not None else math.inf
            initial = result.curve[0].eval_loss
            print(f"sensitivity {label}: lr {lr:g} -> {results[lr]:.4f}", flush=True)
        score = lr_sensitivity(results, initial)
        lines.append(f"| {label} | " + " | ".join(f"{results[lr]:.4f}" for lr in SENSITIVITY_LRS)
                     + f" | {score:.4f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
