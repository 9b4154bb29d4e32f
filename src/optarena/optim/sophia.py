"""Sophia: clipped second-order updates from a cheap diagonal Hessian estimate.

Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
Language Model Pre-training" (arXiv:2305.14342); reference code Liuhong99/Sophia
(SophiaG) and Levanter's ``optim/sophia.py`` (SophiaH).

Every step, per parameter with gradient ``g``, momentum ``m`` and Hessian estimate ``h``::

    θ <- θ (1 - lr wd)
    m <- b1 m + (1 - b1) g
    θ <- θ - lr clip(m / max(rho h, eps), -1, 1)

This is the paper's ``η clip(m / max(γ h, ε), 1)`` with the reference code's
reparameterisation (``lr = ρ η`` of the paper, so ``lr`` bounds each coordinate's step);
like the reference, ``m`` is not bias-corrected. Before the first estimate ``h = 0`` and
the step is ``lr sign(m)``.

Every ``hessian_interval`` steps ``h <- b2 h + (1 - b2) ĥ`` with a fresh estimate ``ĥ``:

- **SophiaG** (Gauss–Newton–Bartlett): ``ĥ = B ĝ ⊙ ĝ`` where ``ĝ`` is the gradient of the
  mean loss on labels *sampled from the model's own softmax* and ``B`` the number of
  label samples (tokens) in that loss. ``B`` matters: without it ``h`` shrinks with the
  batch size and ``rho`` would have to absorb it (the reference multiplies by ``bs``).
- **SophiaH** (Hutchinson): ``ĥ = u ⊙ (H u)`` with ``u ~ N(0, I)`` (or Rademacher), one
  Hessian-vector product by double backward; ``ĥ`` can be negative, hence ``max(., eps)``.
  ``hessian_clip`` optionally clips ``ĥ`` to [-c, c] as Levanter does (off by default).

**The Hessian pass is explicit.** The optimizer never runs a forward pass inside
``step()``. A training loop asks ``optimizer.hessian_step_due()`` (True when the number
of steps taken is a multiple of ``hessian_interval``, including 0) and then calls
``optimizer.update_hessian(loss_closure, sampled_loss_closure, batch_size=B)``, where each
closure runs a forward pass on a batch and returns the scalar mean loss; the sampled one
uses labels drawn from the model's predictive distribution (``None`` where that does not
apply). The closures may be called with or without ``.grad`` populated: the estimate uses
``torch.autograd.grad`` and never touches ``p.grad``. Typical loop (the arena's trainer)::

    loss = loss_fn(model, batch); loss.backward(); optimizer.step()
    if optimizer.hessian_step_due():
        optimizer.update_hessian(lambda: loss_fn(model, batch), lambda: sampled_loss_fn(model, batch),
                                 batch_size=tokens_in_batch)
    optimizer.zero_grad()

Deviations from the reference: the sampled-label gradient is not clipped (the reference
clips it with the training gradient's threshold); SophiaG without a sampled-loss closure
falls back to the true labels (the empirical Fisher) with a warning.

State: m and h, 8 bytes/param in fp32.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch

from optarena.optim._foreach import CopiesItsAttributes, collect_grads, run_closure
from optarena.optim.kernels import ElementwiseUpdate, elementwise
from optarena.optim.hooks import TrainingHooks
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_choice, check_hparams, check_int, check_positive

__all__ = ["SophiaG", "SophiaH"]

LossClosure = Callable[[], torch.Tensor]


class _Sophia(CopiesItsAttributes, torch.optim.Optimizer, TrainingHooks):
    """The update and the hook shared by SophiaG and SophiaH; subclasses estimate ĥ."""

    _name = "Sophia"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float],
        rho: float,
        weight_decay: float,
        eps: float,
        hessian_interval: int,
        foreach: bool,
        fused: bool,
    ) -> None:
        name = self._name
        check_hparams(name, lr=lr, betas=betas, weight_decay=weight_decay)
        check_positive(name, "rho", rho)
        check_positive(name, "eps", eps)
        check_int(name, "hessian_interval", hessian_interval, 1)
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, eps=eps,
                        hessian_interval=hessian_interval, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    # --- the hook pair -------------------------------------------------------------------
    def hessian_step_due(self) -> bool:
        """True when the steps taken so far are a multiple of ``hessian_interval`` (including 0)."""
        group = self.param_groups[0]
        return group.get("step", 0) % group["hessian_interval"] == 0

    def update_hessian(
        self, loss_closure: LossClosure, sampled_loss_closure: LossClosure | None = None,
        *, batch_size: int | None = None,
    ) -> torch.Tensor:
        """Refresh the Hessian EMA from one estimate; returns the (detached) loss it used.

        Non-finite parameters (a non-finite gradient reached them) are left as they are and
        the result is NaN: the loss closures cannot be trusted on them (sampling labels fails).
        A non-finite estimate makes the Hessian EMA NaN where it is, so the next step shows it.
        """
        pairs = [(p, g["betas"][1]) for g in self.param_groups for p in g["params"] if p.requires_grad]
        params = [p for p, _ in pairs]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            return torch.tensor(float("nan"))
        with torch.enable_grad():
            loss, estimates = self._estimate(params, loss_closure, sampled_loss_closure, batch_size)
        with torch.no_grad():
            for (p, beta2), est in zip(pairs, estimates):
                if est is None:
                    continue
                if "hessian" not in self.state[p]:
                    self._init_state(p)
                est = est.to(p.dtype)
                self.state[p]["hessian"].lerp_(est, 1 - beta2).add_(est, alpha=0)  # NaN where est is not finite
        return loss.detach()

    def _estimate(
        self, params: list[torch.Tensor], loss_closure: LossClosure, sampled_loss_closure: LossClosure | None,
        batch_size: int | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        raise NotImplementedError

    def _init_state(self, p: torch.Tensor) -> None:
        self.state[p]["exp_avg"] = torch.zeros_like(p)
        self.state[p]["hessian"] = torch.zeros_like(p)

    # --- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = run_closure(closure)
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            params, grads = collect_grads(self._name, group["params"])
            exp_avgs, hessians = [], []
            for p in params:
                if "exp_avg" not in self.state[p]:
                    self._init_state(p)
                exp_avgs.append(self.state[p]["exp_avg"])
                hessians.append(self.state[p]["hessian"])
            hyper = dict(lr=group["lr"], beta1=group["betas"][0], rho=group["rho"],
                         weight_decay=group["weight_decay"], eps=group["eps"])
            _SOPHIA.run(group, (params, grads, exp_avgs, hessians), hyper, {k: float(v) for k, v in hyper.items()})
        return loss


def _sophia_single_tensor(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    hessians: list[torch.Tensor], *, lr: float, beta1: float, rho: float, weight_decay: float, eps: float,
) -> None:
    for p, g, m, h in zip(params, grads, exp_avgs, hessians):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        ratio = m / h.clamp_min(eps / rho)
        p.add_(ratio.clamp_(-rho, rho).add_(g, alpha=0), alpha=-lr / rho)  # + 0 g: an inf gradient reaches θ


def _sophia_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    hessians: list[torch.Tensor], *, lr: float, beta1: float, rho: float, weight_decay: float, eps: float,
) -> None:
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    # lr clip(m / max(rho h, eps), -1, 1) computed as (lr / rho) clip(m / max(h, eps / rho), -rho, rho):
    # the same value with one tensor pass fewer
    ratio = torch._foreach_div(exp_avgs, torch._foreach_clamp_min(hessians, eps / rho))
    if len(ratio) <= 4:  # a CPU cache block: one clamp pass per tensor beats two foreach passes
        for r in ratio:
            r.clamp_(-rho, rho)
    else:
        torch._foreach_clamp_min_(ratio, -rho)
        torch._foreach_clamp_max_(ratio, rho)
    torch._foreach_add_(ratio, grads, alpha=0)  # the clip maps an inf gradient to rho; + 0 g makes θ NaN
    torch._foreach_add_(params, ratio, alpha=-lr / rho)


_SOPHIA = ElementwiseUpdate(_sophia_single_tensor, _sophia_foreach, elementwise.sophia)


class SophiaG(_Sophia):
    """SophiaG: Gauss–Newton–Bartlett Hessian estimate from sampled labels (see module docstring).

    Args:
        params: tensors or param-group dicts.
        lr: bound on each coordinate's step (>= 0, default 1e-4).
        betas: (momentum b1, Hessian EMA b2) in [0, 1) (default (0.965, 0.99)).
        rho: the clipping scale γ (> 0, default 0.04).
        weight_decay: decoupled, multiplied by lr (default 0.1).
        eps: floor of the denominator (default 1e-12).
        hessian_interval: steps between Hessian estimates (default 10).
        batch_size: default ``B`` of ``update_hessian`` (label samples in the estimation loss).
        foreach: multi-tensor update (default True).
        fused: one pass per tensor (default False; :mod:`optarena.optim.kernels`).
    """

    _name = "SophiaG"

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-12,
        hessian_interval: int = 10,
        batch_size: int | None = None,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        if batch_size is not None:
            check_int("SophiaG", "batch_size", batch_size, 1)
        self.batch_size = batch_size
        self._warned: set[str] = set()
        super().__init__(params, lr, betas, rho, weight_decay, eps, hessian_interval, foreach, fused)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    def _estimate(self, params, loss_closure, sampled_loss_closure, batch_size):  # type: ignore[override]
        closure = sampled_loss_closure
        if closure is None:
            self._warn_once("labels", "SophiaG got no sampled-label loss; using the true labels "
                            "(empirical Fisher) for the Gauss-Newton-Bartlett estimate")
            closure = loss_closure
        size = batch_size if batch_size is not None else self.batch_size
        if size is None:
            self._warn_once("size", "SophiaG.update_hessian got no batch_size; using B=1, so rho must "
                            "absorb the number of label samples per batch")
            size = 1
        elif not (isinstance(size, int) and size >= 1):
            raise ValueError(f"SophiaG batch_size must be an int >= 1, got batch_size={size!r}")
        loss = closure()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss, [None if g is None else g.square().mul_(size) for g in grads]


class SophiaH(_Sophia):
    """SophiaH: Hutchinson estimate u ⊙ (H u) by double backward (see module docstring).

    Args:
        params, lr, betas, weight_decay, eps, hessian_interval, foreach, fused: as :class:`SophiaG`.
        rho: the clipping scale γ (> 0, default 0.01, Levanter's γ_H).
        distribution: ``"gaussian"`` (default) or ``"rademacher"`` probe vectors.
        hessian_clip: clip each estimate to [-c, c] before the EMA; ``None`` (default) does not.
    """

    _name = "SophiaH"
    DISTRIBUTIONS = ("gaussian", "rademacher")

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.01,
        weight_decay: float = 0.1,
        eps: float = 1e-12,
        hessian_interval: int = 10,
        distribution: str = "gaussian",
        hessian_clip: float | None = None,
        foreach: bool = True,
        fused: bool = False,
    ) -> None:
        check_choice("SophiaH", "distribution", distribution, self.DISTRIBUTIONS)
        if hessian_clip is not None:
            check_positive("SophiaH", "hessian_clip", hessian_clip)
        self.distribution = distribution
        self.hessian_clip = hessian_clip
        super().__init__(params, lr, betas, rho, weight_decay, eps, hessian_interval, foreach, fused)

    def _estimate(self, params, loss_closure, sampled_loss_closure, batch_size):  # type: ignore[override]
        loss = loss_closure()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        estimates: list[torch.Tensor | None] = [
            None if g is None else torch.zeros_like(params[i]) for i, g in enumerate(grads)
        ]  # a gradient without a graph means the loss is linear in that parameter: ĥ = 0
        if used:
            probes = []
            for i in used:  # drawn in the logical order (not a strided parameter's memory order)
                p = params[i]
                if self.distribution == "gaussian":
                    probes.append(torch.randn(p.shape, dtype=p.dtype, device=p.device))
                else:
                    probes.append(torch.randint(0, 2, p.shape, dtype=p.dtype, device=p.device).mul_(2).sub_(1))
            hvps = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used], grad_outputs=probes,
                                       allow_unused=True)
            for i, u, hu in zip(used, probes, hvps):
                if hu is not None:
                    est = (u * hu).detach()
                    if self.hessian_clip is not None:
                        est.clamp_(-self.hessian_clip, self.hessian_clip)
                    estimates[i] = est
        return loss, estimates


_PAPER = Paper("Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training",
               "2305.14342", 2023)

register(
    OptimizerSpec(
        name="sophia_g",
        cls=SophiaG,
        family="second-order",
        defaults=dict(lr=3e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, hessian_interval=10),
        search_space=dict(lr=FloatRange(3e-5, 3e-3), rho=FloatRange(0.01, 0.3)),
        state_bytes=8.0,
        paper=_PAPER,
        description="clipped momentum over a Gauss-Newton-Bartlett diagonal Hessian (sampled labels, every k steps)",
    )
)

register(
    OptimizerSpec(
        name="sophia_h",
        cls=SophiaH,
        family="second-order",
        defaults=dict(lr=3e-4, betas=(0.965, 0.99), rho=0.01, weight_decay=0.1, hessian_interval=10),
        search_space=dict(lr=FloatRange(3e-5, 3e-3), rho=FloatRange(3e-3, 0.1)),
        state_bytes=8.0,
        paper=_PAPER,
        description="clipped momentum over a Hutchinson diagonal Hessian (double backward, every k steps)",
    )
)
