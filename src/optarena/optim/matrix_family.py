"""The base of the Muon family: hidden matrices get the method's rule, every other parameter AdamW.

A :class:`MatrixOptimizer` holds param groups with ``matrix=True`` (the default), whose
tensors (ndim >= 2, conv weights included) get the subclass's ``_matrix_group`` rule, and
groups with ``matrix=False`` (embeddings, readout, biases, norm gains), which get AdamW
(arXiv:1711.05101) with ``adamw_betas`` / ``adamw_eps`` and the group's own ``lr`` and
``weight_decay``, so one object serves a whole model. :func:`matrix_param_groups` builds
those groups from a partitioned model (what ``create_optimizer`` does for the family). A
group added later with ``add_param_group`` follows the same rule: a plain ``{"params": [...]}``
gets the matrix rule and the optimizer's ``lr``; ``matrix=False`` (with its own ``lr``) gets AdamW.

The base validates every argument with a conventional name (``lr``, ``momentum``,
``weight_decay``, ``betas``, ``eps``, ``nesterov``, ...; :mod:`optarena.validation`) and the
Newton–Schulz options (``ns_steps``, ``ns_coefficients``, ``ns_method``) in each group;
a subclass checks only the arguments of its own method. :class:`NewtonSchulzOptimizer`
declares the Newton–Schulz options once for the members whose rule orthogonalises, and
:func:`register_matrix_optimizer` registers a member with the family's AdamW grouping.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import CopiesItsAttributes, adamw_rule, collect_grads, run_closure, zeros_state
from optarena.optim.orthogonalize import MUON_COEFFICIENTS, ORTHOGONALIZATION_METHODS, orthogonalize_many
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register, registered_name
from optarena.validation import check_choice, check_conventional, check_int

__all__ = [
    "NS_METHODS", "MatrixOptimizer", "NewtonSchulzOptimizer", "check_ns", "matrix_param_groups",
    "register_matrix_optimizer",
]

NS_METHODS = tuple(m for m in ORTHOGONALIZATION_METHODS if m != "svd")


def check_ns(owner: str, ns_steps: Any, ns_coefficients: Any, ns_method: Any = "newton_schulz") -> None:
    """Newton–Schulz options: 0..100 steps, one triple (a, b, c) or one per step, a known method."""
    check_int(owner, "ns_steps", ns_steps, 0, 100)
    triples = ns_coefficients if ns_coefficients and isinstance(ns_coefficients[0], (tuple, list)) else [ns_coefficients]
    if not all(isinstance(t, (tuple, list)) and len(t) == 3 and all(isinstance(c, (int, float)) for c in t)
               for t in triples):
        raise ValueError(
            f"{owner} ns_coefficients must be three floats (a, b, c) or a sequence of such triples, "
            f"got ns_coefficients={ns_coefficients!r}"
        )
    check_choice(owner, "ns_method", ns_method, NS_METHODS)


class MatrixOptimizer(CopiesItsAttributes, torch.optim.Optimizer):
    """Base of the Muon family: ``matrix=True`` groups get the subclass's rule, the rest AdamW.

    Subclasses implement ``_matrix_group(group)`` (and may set ``vector_ok`` when their
    matrix rule also accepts 1-D tensors). ``_extra_state`` / ``_load_extra_state`` let a
    subclass keep state that belongs to no parameter (a random generator, a global step);
    it travels in ``state_dict()["extra"]`` so a restored optimizer continues exactly.

    Args:
        params: tensors or param-group dicts (``matrix=False`` marks an AdamW group).
        defaults: the subclass's hyperparameters (``lr`` among them).
        adamw_betas, adamw_eps: the AdamW rule of ``matrix=False`` groups.
        foreach: batch element-wise ops and Newton–Schulz over equal shapes (default True);
            ``False`` runs one tensor at a time (same result up to rounding).
    """

    vector_ok = False

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        foreach: bool = True,
    ) -> None:
        defaults = {**defaults, "adamw_betas": adamw_betas, "adamw_eps": adamw_eps, "foreach": bool(foreach),
                    "matrix": True}
        self._check_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's contract); like the constructor's groups it takes the defaults it does not set.

        A plain ``{"params": [...]}`` thus gets the matrix rule with the optimizer's ``lr``; a
        group with ``matrix=False`` gets the AdamW rule (give it its own ``lr``).
        """
        super().add_param_group(param_group)
        try:
            self._check_new_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def _check_new_group(self, group: dict[str, Any]) -> None:
        self._check_group(group)
        if group["matrix"] and not self.vector_ok:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(
                        f"{type(self).__name__} matrix groups take tensors with ndim >= 2, got shape "
                        f"{tuple(p.shape)}; put biases, gains and embeddings in a group with matrix=False"
                        + self._create_hint()
                    )

    def _create_hint(self) -> str:
        name = registered_name(type(self))
        return f" (optarena.optim.create_optimizer({name!r}, model) does this for you)" if name else ""

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate the conventional and Newton–Schulz hyperparameters of ``group``; pairs become tuples."""
        owner = type(self).__name__
        check_conventional(owner, group)
        if "ns_steps" in group:
            check_ns(owner, group["ns_steps"], group["ns_coefficients"], group.get("ns_method", "newton_schulz"))
            group["ns_coefficients"] = tuple(group["ns_coefficients"])
        for key in ("betas", "adamw_betas"):
            if key in group:
                group[key] = tuple(group[key])

    # ---- the step ----
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        self._before_step()
        for group in self.param_groups:
            if group["matrix"]:
                self._matrix_group(group)
            else:
                self._adamw_group(group)
        self._after_step(loss)
        return loss

    def _before_step(self) -> None:
        """Hook run at the start of :meth:`step` (Drop-Muon draws its layers here when nobody else did)."""

    def _after_step(self, loss: Any) -> None:
        """Hook run at the end of :meth:`step` with the closure's loss (or None)."""

    def _matrix_group(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adamw_group(
        self, group: dict[str, Any], params: list[torch.Tensor] | None = None,
        grads: list[torch.Tensor] | None = None,
    ) -> None:
        """AdamW (arXiv:1711.05101) on ``params`` (default: the group's params that have a gradient).

        ``grads`` replaces the parameters' gradients (MKOR feeds its preconditioned gradients).
        """
        if params is None:
            params, grads = collect_grads(type(self).__name__, group["params"])
        elif grads is None:
            grads = [p.grad for p in params]
        buckets: dict[Any, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            state = self.state[p]
            if "exp_avg" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            key = (p.device, p.dtype, int(state["step"]))
            buckets[key if group["foreach"] else (key, i)].append(i)
        for key, idx in buckets.items():
            adamw_rule(
                [params[i] for i in idx], [grads[i] for i in idx],
                [self.state[params[i]]["exp_avg"] for i in idx],
                [self.state[params[i]]["exp_avg_sq"] for i in idx],
                step=int(self.state[params[idx[0]]]["step"]), lr=group["lr"], betas=group["adamw_betas"],
                eps=group["adamw_eps"], weight_decay=group["weight_decay"],
            )

    # ---- state that belongs to no parameter ----
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = self._extra_state()
        if extra:
            state["extra"] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("extra", None)
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; statistics we keep in float32 for
        # bf16 parameters (factors, norms) must come back in their saved precision to continue exactly
        by_index = {
            index: p
            for saved, group in zip(state_dict["param_groups"], self.param_groups)
            for index, p in zip(saved["params"], group["params"])
        }
        for index, saved_state in state_dict["state"].items():
            p = by_index.get(index)
            if p is None:
                continue
            for key, value in saved_state.items():
                current = self.state[p].get(key)
                if torch.is_tensor(value) and torch.is_tensor(current) and current.dtype != value.dtype:
                    self.state[p][key] = value.to(device=p.device)
        if extra is not None:
            self._load_extra_state(extra)

    # ---- shared pieces of the matrix rules ----
    def _momentum_buffers(self, params: list[torch.Tensor], key: str = "momentum_buffer") -> list[torch.Tensor]:
        return zeros_state(self, params, key)[0]

    @staticmethod
    def _ema_and_nesterov(
        bufs: list[torch.Tensor], grads: list[torch.Tensor], beta: float, nesterov: bool, foreach: bool
    ) -> list[torch.Tensor]:
        """``M <- beta M + (1 - beta) G``; returns ``(1 - beta) G + beta M`` (Nesterov) or ``M``."""
        if foreach:
            torch._foreach_lerp_(bufs, grads, 1 - beta)
            return torch._foreach_lerp(grads, bufs, beta) if nesterov else bufs
        for m, g in zip(bufs, grads):
            m.lerp_(g, 1 - beta)
        return [torch.lerp(g, m, beta) for g, m in zip(grads, bufs)] if nesterov else bufs

    def _momentum_updates(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's params with a gradient and their EMA-momentum updates (Nesterov blend per ``group``)."""
        params, grads = collect_grads(type(self).__name__, group["params"])
        if not params:
            return [], []
        bufs = self._momentum_buffers(params)
        return params, self._ema_and_nesterov(bufs, grads, group["momentum"], group["nesterov"], group["foreach"])

    @staticmethod
    def _orthogonalize(group: dict[str, Any], updates: list[torch.Tensor], cast_back: bool = True) -> list[torch.Tensor]:
        """Newton–Schulz (or the group's method) on each update reshaped to ``(rows, -1)``."""
        return orthogonalize_many(
            [u.reshape(u.shape[0], -1) for u in updates], steps=group["ns_steps"],
            coefficients=group["ns_coefficients"], dtype=group["ns_dtype"],
            exact=group.get("exact_orthogonalization", False), method=group.get("ns_method", "newton_schulz"),
            batched=group["foreach"], cast_back=cast_back,
        )

    @staticmethod
    def _decay_and_add(p: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float, alpha: float) -> None:
        """``W <- W (1 - lr wd) + alpha U`` (decay and update back to back: the second pass finds W in cache).

        Under ``torch.compile`` ``alpha U`` is formed first: on CPU, Inductor drops the ``alpha`` of
        ``p.add_(U, alpha=...)`` when ``U`` comes from a matmul with ``out=`` (Newton–Schulz's buffers).
        Eager keeps the fused ``add_`` (its rounding is what the pinned trajectories record).
        """
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        if torch.compiler.is_compiling():
            p.add_(update * alpha)
        else:
            p.add_(update, alpha=alpha)


class NewtonSchulzOptimizer(MatrixOptimizer):
    """A :class:`MatrixOptimizer` whose rule orthogonalises (``self._orthogonalize``).

    Args (keyword-only, besides those of :class:`MatrixOptimizer`):
        ns_steps: Newton–Schulz iterations (default 5).
        ns_coefficients: quintic coefficients (a, b, c), or one triple per step.
        ns_dtype: compute dtype of Newton–Schulz; ``None``: bf16 where bf16 matmuls are native
            (accelerators, AMX / AVX512-BF16 CPUs), else fp32; fp64 for fp64 parameters.
        ns_method: ``"newton_schulz"`` (default), ``"gram"`` (same polynomial iterated on
            the small Gram matrix, fewer FLOPs for rectangular weights, fp32+) or ``"auto"``
            (the cheaper of the two per shape); see :mod:`optarena.optim.orthogonalize`.
        exact_orthogonalization: use the SVD polar factor instead of Newton–Schulz (slow; a reference).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        ns_dtype: torch.dtype | None = None,
        ns_method: str = "newton_schulz",
        exact_orthogonalization: bool = False,
        **kwargs: Any,
    ) -> None:
        defaults = {**defaults, "ns_steps": ns_steps, "ns_coefficients": ns_coefficients, "ns_dtype": ns_dtype,
                    "ns_method": ns_method, "exact_orthogonalization": exact_orthogonalization}
        super().__init__(params, defaults, **kwargs)


def matrix_param_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Hidden matrices get the matrix rule; embeddings and readout the AdamW rule; vectors AdamW without decay.

    ``args`` carries ``adamw_lr`` and ``adamw_weight_decay`` (the builder defaults of the family).
    """
    groups = [
        {"params": [p for _, p in partition.hidden], "names": [n for n, _ in partition.hidden],
         "matrix": True},
        {"params": [p for _, p in partition.embedding + partition.readout],
         "names": [n for n, _ in partition.embedding + partition.readout],
         "matrix": False, "lr": args["adamw_lr"], "weight_decay": args["adamw_weight_decay"]},
        {"params": [p for _, p in partition.vector], "names": [n for n, _ in partition.vector],
         "matrix": False, "lr": args["adamw_lr"], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def register_matrix_optimizer(
    name: str,
    cls: type[MatrixOptimizer],
    *,
    defaults: dict[str, Any],
    search_space: dict[str, Any],
    paper: Paper,
    description: str,
    family: str = "matrix",
    state_bytes: float = 4.0,
    adamw_lr: float = 3e-3,
    build_groups: Callable[..., list[dict[str, Any]]] = matrix_param_groups,
) -> OptimizerSpec:
    """Register a member of the family: its AdamW groups get ``adamw_lr`` (tuned in [3e-4, 3e-2]) and no decay."""
    return register(OptimizerSpec(
        name=name, cls=cls, family=family, defaults=defaults,
        builder_defaults=dict(adamw_lr=adamw_lr, adamw_weight_decay=0.0),
        search_space={**search_space, "adamw_lr": FloatRange(3e-4, 3e-2)},
        state_bytes=state_bytes, paper=paper, description=description, build_groups=build_groups,
    ))
