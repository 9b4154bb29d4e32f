"""MKOR and MKOR-H: Kronecker-factored preconditioning with rank-1 Sherman–Morrison updates.

Mozaffari, Li, Zhang, Mehri Dehnavi, "MKOR: Momentum-Enabled Kronecker-Factor-Based
Optimizer Using Rank-1 Updates" (NeurIPS 2023, arXiv:2306.01685); reference code
Mohammad-Mozaffari/mkor (``mkor/mkor.py``, ``mkor/utils/factors.py``).

For every ``nn.Linear`` whose weight ``W`` (d_out x d_in) is in a ``matrix=True`` group,
forward hooks record the layer input ``a`` and (through a hook on the output tensor) the
output gradient ``delta``. Every ``inv_freq`` steps (and every step during
``warmup_steps``) the rank-1 statistics are::

    a_bar = mean over rows of clip(a, +-c)          # rows = batch x tokens
    d_bar = mean over rows of clip(N delta, +-c)    # N = rows: undoes the loss's 1/N

and each inverse factor ``F`` in ``{A_inv (d_in x d_in) <- a_bar, G_inv (d_out x d_out) <- d_bar}``::

    if its reset flag is set:  F <- I the first time, else F <- (1 - zeta) F + zeta I; clear the flag
    else:                      X <- 0.95 F + 0.05 I;   F <- X - X v v^T X / (1 + v^T X v)   # Sherman–Morrison
    if max|F| > reset_threshold (2):  set both reset flags of the layer        # norm-based stabiliser

Every step the gradient is preconditioned and rescaled to its own norm, then the base
optimizer runs on it (``base="sgd"``: torch SGD with momentum, L2 weight decay as
``torch.optim.SGD``; ``base="adamw"``: the AdamW rule)::

    D <- G_inv grad(W) A_inv;      D <- D ||grad(W)|| / ||D||

MKOR-H (:class:`MKORH`) falls back to the base optimizer alone "when second-order updates
no longer accelerate convergence" (the paper's README); the paper's exact switch rule was
not available, so the criterion is ours and stated: the training loss, averaged over
consecutive windows of ``switch_window`` steps, must fall by at least ``switch_threshold``
(relative) from one window to the next; the first window that falls by less switches the
optimizer to first-order for good (hooks removed, factors freed). Losses come from
``step(closure)`` or from :meth:`MKORH.observe_loss`, which a training loop calls with
each step's loss; without losses it never switches.

Getting the layer inputs needs the model: ``create_optimizer("mkor", model)`` hands it
over (the builder puts it under a param-group key ``model`` that is removed at
construction), or pass ``model=``. Built from bare parameters, MKOR warns and runs the base
optimizer alone. Matrix-group tensors that are not ``nn.Linear`` weights (conv filters, ...)
also get the base optimizer on their raw gradient.

Deviations from the reference: factors are float32 (the reference defaults to fp16); the
bias is not folded into the input factor (biases are vectors and get the AdamW rule, so
``A_inv`` is d_in x d_in and the norm rescaling uses the weight alone); the stabiliser
blend ``(1 - zeta) F + zeta I`` is applied on resets after the first, as the paper
describes (the reference's membership test makes every reset return to ``I``); the
unused ``stat_decay`` argument is left out (the code hard-codes 0.95 / 0.05, as here);
statistics of several forward passes before one step are averaged.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from typing import Any, Iterable

import torch
from torch import nn

from optarena.optim._foreach import collect_grads
from optarena.optim.hooks import TrainingHooks
from optarena.optim.matrix_family import MatrixOptimizer, matrix_param_groups, register_matrix_optimizer
from optarena.optim.registry import FloatRange, Paper, registered_name
from optarena.validation import check_choice, check_int, check_nonnegative, check_number, check_positive

__all__ = ["MKOR", "MKORH", "sherman_morrison"]

BASES = ("sgd", "adamw")


def sherman_morrison(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(X^-1 + v v^T)^-1`` given ``X`` (symmetric): ``X - X v v^T X / (1 + v^T X v)``."""
    Xv = X @ v
    return X - torch.outer(Xv, Xv) / (1 + v @ Xv)


class MKOR(MatrixOptimizer):
    """MKOR (see module docstring): rank-1 Kronecker preconditioning of ``nn.Linear`` weights + a base optimizer.

    Args:
        lr: learning rate of the base optimizer on the preconditioned gradients.
        momentum, nesterov: SGD momentum of ``base="sgd"`` (default 0.9, False).
        weight_decay: SGD: L2 added to the gradient; AdamW: decoupled.
        base: ``"sgd"`` (the reference's default) or ``"adamw"`` (uses ``adamw_betas``/``adamw_eps``).
        inv_freq: update the inverse factors every this many steps (default 10).
        stabilization_factor: zeta of the reset blend (default 0.1).
        reset_threshold: reset a layer's factors when an entry exceeds this (default 2).
        clipping_value: clip of the recorded inputs / scaled output gradients (default 100).
        warmup_steps: update the factors every step for this many first steps (default 0).
        model: the module whose ``nn.Linear`` layers get hooks (``create_optimizer`` passes it).
        adamw_betas, adamw_eps (default 1e-8), foreach: as :class:`~optarena.optim.matrix_family.MatrixOptimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        base: str = "sgd",
        inv_freq: int = 10,
        stabilization_factor: float = 0.1,
        reset_threshold: float = 2.0,
        clipping_value: float = 100.0,
        warmup_steps: int = 0,
        adamw_eps: float = 1e-8,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        check_choice(owner, "base", base, BASES)
        check_int(owner, "inv_freq", inv_freq, 1)
        check_number(owner, "stabilization_factor", stabilization_factor, 0.0, 1.0, low_open=True)
        check_positive(owner, "reset_threshold", reset_threshold)
        check_positive(owner, "clipping_value", clipping_value)
        check_int(owner, "warmup_steps", warmup_steps, 0)
        groups, model = _take_model(params, model)
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, base=base, inv_freq=inv_freq,
            stabilization_factor=stabilization_factor, reset_threshold=reset_threshold,
            clipping_value=clipping_value, warmup_steps=warmup_steps,
        )
        super().__init__(groups, defaults, adamw_eps=adamw_eps, **kwargs)
        self._steps = 0  # completed steps (decides when statistics are collected)
        # keyed by the weight tensor itself (hashed by identity), so that a deep copy maps them to the copies
        self._stats: dict[torch.Tensor, dict[str, Any]] = {}  # weight -> running sums of a_bar, d_bar
        self._layers: dict[torch.Tensor, nn.Linear] = {}  # weight -> module
        self._handles: list[Any] = []
        if model is None:
            warnings.warn(
                f"{owner} was built without a model, so it cannot record layer inputs and output "
                "gradients: it runs the base optimizer without preconditioning. Use "
                f"create_optimizer({registered_name(type(self)) or 'name'!r}, model) or pass model=.",
                stacklevel=2,
            )
        else:
            self._attach(model)

    # ---- hooks ----
    def _attach(self, model: nn.Module) -> None:
        wanted = {id(p) for g in self.param_groups if g["matrix"] for p in g["params"]}
        hook = _LayerHook(self)
        for module in model.modules():
            if isinstance(module, nn.Linear) and id(module.weight) in wanted and module.weight not in self._layers:
                self._layers[module.weight] = module
                self._handles.append(module.register_forward_hook(hook))

    def remove_hooks(self) -> None:
        """Detach from the model (preconditioning stops)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._layers = {}
        self._stats = {}

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def _collecting(self, group: dict[str, Any]) -> bool:
        return self._steps % group["inv_freq"] == 0 or self._steps < group["warmup_steps"]

    def _forward_hook(self, module: nn.Linear, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not torch.is_grad_enabled() or not output.requires_grad or self._layers.get(module.weight) is not module:
            return  # (a module of a copied model whose optimizer is gone: nothing to record)
        group = self._group_of(module.weight)
        if not self._collecting(group):
            return
        clip = group["clipping_value"]
        x = inputs[0].detach().reshape(-1, module.in_features).float()
        stats = self._stats.setdefault(module.weight, {"a": 0.0, "d": 0.0, "na": 0, "nd": 0})
        stats["a"] = stats["a"] + x.clamp(-clip, clip).mean(dim=0)
        stats["na"] += 1

        def record_output_grad(grad: torch.Tensor) -> None:
            g = grad.detach().reshape(-1, module.out_features).float()
            stats["d"] = stats["d"] + (g * g.shape[0]).clamp(-clip, clip).mean(dim=0)
            stats["nd"] += 1

        output.register_hook(record_output_grad)

    # ---- factors ----
    def _update_factor(self, state: dict[str, Any], name: str, v: torch.Tensor, group: dict[str, Any]) -> None:
        flag = f"reset_{name}"
        eye = torch.eye(v.numel(), dtype=v.dtype, device=v.device)
        if name not in state:
            state[name], state[flag] = eye, False
        elif state[flag]:
            zeta = group["stabilization_factor"]
            state[name] = (1 - zeta) * state[name] + zeta * eye
            state[flag] = False
        else:
            state[name] = sherman_morrison(0.95 * state[name] + 0.05 * eye, v)
            if float(state[name].abs().max()) > group["reset_threshold"]:
                state["reset_A_inv"] = state["reset_G_inv"] = True

    def _update_factors(self) -> None:
        for weight, stats in self._stats.items():
            if not stats["na"] or not stats["nd"]:
                continue
            state = self.state[weight]
            group = self._group_of(weight)
            # input side first, then output side (the reference's order: a reset raised by A resets G at once)
            self._update_factor(state, "A_inv", stats["a"] / stats["na"], group)
            self._update_factor(state, "G_inv", stats["d"] / stats["nd"], group)
        self._stats = {}

    def _precondition(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if p not in self._layers or "A_inv" not in state:
            return grad
        work = grad.float()
        direction = state["G_inv"] @ work @ state["A_inv"]
        ratio = torch.linalg.vector_norm(work) / torch.linalg.vector_norm(direction)
        if not bool(torch.isfinite(ratio)):  # zero gradient: nothing to precondition
            return grad
        return (direction * ratio).to(grad.dtype)

    # ---- the step ----
    def _before_step(self) -> None:
        if self._layers and any(self._collecting(g) for g in self.param_groups if g["matrix"]):
            self._update_factors()

    def _after_step(self, loss: Any) -> None:
        self._steps += 1

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads(type(self).__name__, group["params"])
        if not params:
            return
        directions = [self._precondition(p, g) for p, g in zip(params, grads)]
        if group["base"] == "adamw":
            self._adamw_group(group, params, directions)
            return
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p, d in zip(params, directions):  # torch.optim.SGD arithmetic (dampening 0)
            if wd != 0:
                d = d.add(p, alpha=wd)
            if mu != 0:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(mu).add_(d)
                d = d.add(state["momentum_buffer"], alpha=mu) if group["nesterov"] else state["momentum_buffer"]
            p.add_(d, alpha=-lr)

    def _extra_state(self) -> dict[str, Any]:
        return {"steps": self._steps}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._steps = int(extra["steps"])


class MKORH(MKOR, TrainingHooks):
    """MKOR-H: MKOR that switches to its base optimizer once the loss stops falling fast (module docstring).

    Args:
        switch_window: steps per loss window (default 50).
        switch_threshold: minimum relative fall of the window-mean loss to stay second-order (default 0.02).
        Other arguments as :class:`MKOR`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        switch_window: int = 50,
        switch_threshold: float = 0.02,
        **kwargs: Any,
    ) -> None:
        check_int("MKORH", "switch_window", switch_window, 1)
        check_nonnegative("MKORH", "switch_threshold", switch_threshold)
        self.switch_window, self.switch_threshold = switch_window, float(switch_threshold)
        self.switched = False
        self._window: list[float] = []
        self._previous_mean: float | None = None
        self.switch_step: int | None = None
        super().__init__(params, **kwargs)

    def observe_loss(self, loss: float | torch.Tensor) -> None:
        """Record this step's training loss (call once per step; ``step(closure)`` does it for you)."""
        if self.switched:
            return
        self._window.append(float(loss))
        if len(self._window) < self.switch_window:
            return
        mean = sum(self._window) / len(self._window)
        self._window = []
        if self._previous_mean is not None:
            relative_fall = (self._previous_mean - mean) / abs(self._previous_mean)
            if relative_fall < self.switch_threshold:
                self._switch()
        self._previous_mean = mean

    def _switch(self) -> None:
        self.switched = True
        self.switch_step = self._steps
        self.remove_hooks()
        for state in self.state.values():
            for key in ("A_inv", "G_inv", "reset_A_inv", "reset_G_inv"):
                state.pop(key, None)

    def _after_step(self, loss: Any) -> None:
        super()._after_step(loss)
        if loss is not None:
            self.observe_loss(loss)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "switched": self.switched, "window": list(self._window),
                "previous_mean": self._previous_mean, "switch_step": self.switch_step}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self._window, self._previous_mean = list(extra["window"]), extra["previous_mean"]
        self.switch_step = extra["switch_step"]
        if extra["switched"] and not self.switched:
            self._switch()
            self.switch_step = extra["switch_step"]


class _LayerHook:
    """The forward hook MKOR puts on each layer; holds its optimizer weakly (a model must not keep it alive).

    ``copy.deepcopy`` of the model copies the optimizer along with it (the copy hooks the
    copied layers); where the copied optimizer is not kept elsewhere, the hook does nothing.
    """

    def __init__(self, optimizer: MKOR | None) -> None:
        self._owner = weakref.ref(optimizer) if optimizer is not None else (lambda: None)

    def __call__(self, module: nn.Linear, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        optimizer = self._owner()
        if optimizer is not None:
            optimizer._forward_hook(module, inputs, output)

    def __deepcopy__(self, memo: dict[int, Any]) -> _LayerHook:
        optimizer = self._owner()
        return _LayerHook(copy.deepcopy(optimizer, memo) if optimizer is not None else None)


def _take_model(params: Any, model: nn.Module | None) -> tuple[list[Any], nn.Module | None]:
    """Remove a ``model`` entry from param-group dicts (how ``create_optimizer`` hands the module over)."""
    groups = []
    for item in params:
        if isinstance(item, dict) and "model" in item:
            item = dict(item)
            given = item.pop("model")
            if model is not None and given is not model:
                raise ValueError("MKOR: param groups name different models; pass one model")
            model = given
        groups.append(item)
    return groups, model


def _mkor_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    groups = matrix_param_groups(partition, args)
    for group in groups:
        if group.get("matrix", True):
            group["model"] = partition.model
    return groups


PAPER = Paper("MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using Rank-1 Updates", "2306.01685", 2023)
DEFAULTS = dict(lr=3e-3, momentum=0.9, weight_decay=0.0, base="adamw", inv_freq=10, stabilization_factor=0.1,
                warmup_steps=10)
SEARCH_SPACE = dict(lr=FloatRange(3e-4, 3e-2), weight_decay=FloatRange(1e-4, 0.3))
# state: the base optimizer's (AdamW 8 bytes) + (d_in^2 + d_out^2) float32 factors: 2x P for a square layer
register_matrix_optimizer(
    "mkor", MKOR, family="second-order", defaults=DEFAULTS, search_space=SEARCH_SPACE, state_bytes=16.0,
    paper=PAPER, build_groups=_mkor_groups,
    description="rank-1 Sherman-Morrison Kronecker-factor preconditioning of Linear weights (layer hooks) "
                "before an AdamW step; AdamW on the rest",
)
register_matrix_optimizer(
    "mkor_h", MKORH, family="second-order", defaults={**DEFAULTS, "switch_window": 50, "switch_threshold": 0.02},
    search_space=SEARCH_SPACE, state_bytes=16.0, paper=PAPER, build_groups=_mkor_groups,
    description="MKOR that falls back to its first-order base once the windowed loss stops falling by "
                "switch_threshold",
)
