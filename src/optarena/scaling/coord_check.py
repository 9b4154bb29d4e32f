"""muP's coordinate check: the mean |output| of every module over a few steps, at several widths.

Yang et al., "Tensor Programs V" (arXiv:2203.03466), the check of the ``mup`` package: under
muP each module's curve stays flat across widths; under the standard parametrisation
activations grow with width after the first update.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from optarena.optim.registry import create_optimizer
from optarena.scaling.mup import apply_mup, create_mup_optimizer
from optarena.scaling.mup_plan import check_positive_int

__all__ = ["CoordCheckResult", "CoordRecord", "coord_check", "plot_coord_check"]


@dataclass(frozen=True)
class CoordRecord:
    """Mean |output| of one module, at one width, after ``step`` optimizer updates, for one seed."""

    width: int
    step: int
    module: str
    l1: float
    seed: int


@dataclass
class CoordCheckResult:
    """The tidy table of a coordinate check and summaries of it."""

    records: list[CoordRecord]
    parametrization: str
    optimizer: str
    lr: float

    @property
    def widths(self) -> list[int]:
        return sorted({r.width for r in self.records})

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(r.module for r in self.records))

    def mean_l1(self) -> dict[tuple[str, int, int], float]:
        """``{(module, step, width): mean over seeds}``."""
        sums: dict[tuple[str, int, int], list[float]] = {}
        for r in self.records:
            sums.setdefault((r.module, r.step, r.width), []).append(r.l1)
        return {k: sum(v) / len(v) for k, v in sums.items()}

    def slopes(self) -> dict[tuple[str, int], float]:
        """Least-squares slope of log(mean |x|) against log(width), per (module, step).

        Near 0 means the coordinate size does not change with width (what muP promises);
        NaN where a value is 0 or not finite.
        """
        table = self.mean_l1()
        widths = self.widths
        xs = [math.log(w) for w in widths]
        x_mean = sum(xs) / len(xs)
        denom = sum((x - x_mean) ** 2 for x in xs)
        out = {}
        for module in self.modules:
            for step in self.steps:
                ys = [table.get((module, step, w), float("nan")) for w in widths]
                if denom == 0 or not all(math.isfinite(y) and y > 0 for y in ys):
                    out[(module, step)] = float("nan")
                    continue
                logs = [math.log(y) for y in ys]
                y_mean = sum(logs) / len(logs)
                out[(module, step)] = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, logs)) / denom
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"parametrization": self.parametrization, "width": r.width, "step": r.step,
                 "module": r.module, "l1": r.l1, "seed": r.seed} for r in self.records]


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, targets = batch
    out = model(inputs)
    if targets.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1))
    return nn.functional.mse_loss(out.float(), targets.float())


def coord_check(
    build_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    batches: Sequence[Any] | Callable[[int], Any],
    *,
    steps: int = 3,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    parametrization: str = "mup",
    base_width: int | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    seeds: Sequence[int] = (0,),
    apply_multipliers: bool = True,
    zero_readout: bool = False,
    include: str | None = None,
    **hparams: Any,
) -> CoordCheckResult:
    """Record the mean |output| of every module over ``steps`` training steps at each width.

    The ``mup`` package's check (``mup.coord_check.get_coord_data``):
    under muP each module's curve stays flat across widths; under the standard
    parametrisation activations grow with width after the first update. Use a large ``lr``.

    ``build_model(width)`` makes a fresh model (called under ``torch.manual_seed(seed)``);
    ``batches`` is a sequence of at least ``steps`` batches or ``step -> batch``, the same
    for every width; ``loss_fn(model, batch)`` defaults to cross-entropy (integer targets)
    or MSE on ``(inputs, targets)``. Step ``t`` holds the forward pass after ``t`` updates
    (``t = 0`` is the init). With ``parametrization="mup"`` the base is
    ``build_model(base_width)`` (default: the smallest width), :func:`apply_mup` is applied
    unless ``apply_multipliers=False`` (for models that build their own muP, like ``lm``
    with :func:`~optarena.arena.workloads.lm_mup.mup_lm_config`), and the optimizer comes
    from :func:`create_mup_optimizer`; ``zero_readout`` zeroes the readout at init (the network output then starts at 0
    instead of shrinking as width^-1/2, which otherwise tilts the output's curve early on).
    ``include`` is a regular expression on module names (root = ``"<model>"``).
    """
    if parametrization not in ("mup", "standard"):
        raise ValueError(f"parametrization must be 'mup' or 'standard', got {parametrization!r}")
    if not widths:
        raise ValueError("widths must name at least one width")
    for w in widths:
        check_positive_int("width", w)
    check_positive_int("steps", steps)
    if not callable(batches) and len(batches) < steps:
        raise ValueError(f"got {len(batches)} batches for steps={steps}; pass at least one batch per step")
    pattern = re.compile(include) if include else None
    loss_fn = loss_fn or _default_loss
    base_width = min(widths) if base_width is None else base_width
    records: list[CoordRecord] = []
    for seed in seeds:
        base = None
        if parametrization == "mup":
            torch.manual_seed(seed)
            base = build_model(base_width)
        for width in widths:
            torch.manual_seed(seed)
            model = build_model(width)
            if parametrization == "mup":
                if apply_multipliers:
                    apply_mup(model, base, zero_readout=zero_readout)
                opt = create_mup_optimizer(optimizer, model, base, lr=lr, **hparams)
            else:
                opt = create_optimizer(optimizer, model, lr=lr, **hparams)
            seen: dict[str, list[float]] = {}

            def record(name: str) -> Callable[..., None]:
                def hook(module: nn.Module, args: Any, output: Any) -> None:
                    tensor = _first_tensor(output)
                    if tensor is not None and tensor.is_floating_point():
                        seen.setdefault(name, []).append(float(tensor.detach().abs().float().mean()))
                return hook

            handles = []
            for name, module in model.named_modules():
                label = name or "<model>"
                if pattern is None or pattern.search(label):
                    handles.append(module.register_forward_hook(record(label)))
            model.train()
            try:
                for step in range(steps):
                    seen.clear()
                    batch = batches(step) if callable(batches) else batches[step]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model, batch)
                    for name, values in seen.items():
                        records.append(CoordRecord(width, step, name, sum(values) / len(values), seed))
                    loss.backward()
                    opt.step()
            finally:
                for handle in handles:
                    handle.remove()
    return CoordCheckResult(records, parametrization, optimizer, lr)


def plot_coord_check(
    results: CoordCheckResult | Sequence[CoordCheckResult],
    path: str,
    *,
    title: str | None = None,
    max_legend: int = 16,
) -> str:
    """Write a PNG: one row per result, one panel per step, mean |output| against width (log-log)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, CoordCheckResult) else list(results)
    if not results:
        raise ValueError("nothing to plot: pass at least one CoordCheckResult")
    steps = sorted({s for r in results for s in r.steps})
    fig, axes = plt.subplots(len(results), len(steps), figsize=(3.2 * len(steps) + 2.5, 3.0 * len(results)),
                             squeeze=False, sharex=True)
    modules = list(dict.fromkeys(m for r in results for m in r.modules))
    colors = plt.cm.viridis([i / max(1, len(modules) - 1) for i in range(len(modules))])
    for row, result in enumerate(results):
        table = result.mean_l1()
        for col, step in enumerate(steps):
            ax = axes[row][col]
            for module, color in zip(modules, colors):
                points = [(w, table[(module, step, w)]) for w in result.widths if (module, step, w) in table]
                if points:
                    ax.plot(*zip(*points), marker=".", color=color, linewidth=1, label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{result.parametrization}, step {step}", fontsize=9)
            if col == 0:
                ax.set_ylabel("mean |output|")
            if row == len(results) - 1:
                ax.set_xlabel("width")
    if len(modules) <= max_legend:
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    first = results[0]
    fig.suptitle(title or f"coordinate check: {first.optimizer}, lr={first.lr:g} ({len(modules)} modules)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
