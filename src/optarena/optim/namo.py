"""NAMO and NAMO-D: orthogonalised momentum with an Adam-type norm-adaptive step size.

"Adam Improves Muon: Adaptive Moment Estimation with Orthogonalized Momentum"
(arXiv:2602.17080); reference code minxin-zhg/namo ``src/namo.py``.

NAMO, per hidden matrix ``W`` (m x n, conv weights flattened to ``(out, -1)``)::

    M <- mu1 M + (1 - mu1) G;        U <- (1 - mu1) G + mu1 M   if nesterov else M
    v <- mu2 v + (1 - mu2) ||G||_F^2                       # one float32 scalar per matrix
    O <- NewtonSchulz5(U)                                 # batched over equal shapes
    alpha <- lr sqrt(1 - mu2^t) / (1 - mu1^t + 1e-12) * ||U||_F / (sqrt(v) + eps)
    W <- W (1 - wd min(alpha, 1))                          # decay with the un-shaped alpha
    W <- W - min(alpha c sqrt(max(m, n)), 1) O             # c = scale_coeff = 0.2

NAMO-D keeps one ``V_j`` per column ``j`` (an input feature of ``nn.Linear``)::

    V_j <- mu2 V_j + (1 - mu2) ||G[:, j]||^2
    s_j <- ||U[:, j]|| / (sqrt(V_j) + eps);  s_j <- clip(s_j, c_clamp mean(s), mean(s) / c_clamp)
    base <- lr sqrt(1 - mu2^t) / (1 - mu1^t + 1e-12)
    W[:, j] <- W[:, j] max(0, 1 - wd min(s_j base, 1))
    W[:, j] <- W[:, j] - min(s_j base c sqrt(max(m, n)), 1) O[:, j]

The clamp applies when ``0 < col_clamp <= 1`` (0 disables it); its mean ignores NaNs and is
skipped when the mean is not finite and positive, as in the reference. The numerator uses
the norm of the Nesterov-blended momentum, the denominator the EMA of the *raw* gradient's
squared norm. Deviation: for conv weights the shape factor uses the flattened
``(out, in*kh*kw)`` shape (the reference uses ``(out, in)``), consistent with our Muon.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from optarena.optim._foreach import collect_grads
from optarena.optim.matrix_family import NewtonSchulzOptimizer, register_matrix_optimizer
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_nonnegative, check_number, check_unit_interval

__all__ = ["NAMO", "NAMOD"]


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    mask = ~torch.isnan(x)
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


class NAMO(NewtonSchulzOptimizer):
    """NAMO (see module docstring); AdamW on ``matrix=False`` groups.

    Args:
        lr: learning rate (default 1e-2; the paper's GPT-2 small run uses 0.012).
        momentum: mu1, EMA of the gradient (default 0.95).
        mu2: EMA of the squared gradient norm (default 0.99).
        eps: added to sqrt(v) (reference ``adamnorm_eps``, default 1e-8).
        nesterov: Nesterov blend (default True).
        scale_coeff: c in ``c sqrt(max(m, n))`` (default 0.2, "match RMS AdamW").
        weight_decay: scaled by the clamped adaptive step (default 0.1).
        ns_steps, ns_coefficients, ns_dtype, ns_method, exact_orthogonalization: the orthogonalisation
            (:class:`~optarena.optim.matrix_family.NewtonSchulzOptimizer`).
        adamw_betas, adamw_eps (default 1e-8), foreach: as :class:`~optarena.optim.matrix_family.MatrixOptimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        momentum: float = 0.95,
        mu2: float = 0.99,
        eps: float = 1e-8,
        nesterov: bool = True,
        scale_coeff: float = 0.2,
        weight_decay: float = 0.1,
        adamw_eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        check_unit_interval(type(self).__name__, "mu2", mu2)
        check_nonnegative(type(self).__name__, "scale_coeff", scale_coeff)
        defaults = dict(lr=lr, momentum=momentum, mu2=mu2, eps=eps, nesterov=nesterov, scale_coeff=scale_coeff,
                        weight_decay=weight_decay)
        super().__init__(params, defaults, adamw_eps=adamw_eps, **kwargs)

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads(type(self).__name__, group["params"])
        if not params:
            return
        mu1, mu2 = group["momentum"], group["mu2"]
        for p, g in zip(params, grads):  # second-moment statistics use the raw gradient
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                self._init_second_moment(state, p)
            state["step"] += 1
            self._update_second_moment(state, g.reshape(g.shape[0], -1), mu2)
        bufs = self._momentum_buffers(params)
        updates = self._ema_and_nesterov(bufs, grads, mu1, group["nesterov"], group["foreach"])
        ortho = self._orthogonalize(group, updates)
        for p, u, o in zip(params, updates, ortho):
            state = self.state[p]
            t = int(state["step"])
            base = group["lr"] * math.sqrt(1 - mu2**t) / (1 - mu1**t + 1e-12)
            shape_factor = group["scale_coeff"] * math.sqrt(max(o.shape))
            self._apply(group, state, p, u.reshape(u.shape[0], -1), o, base, shape_factor)

    def _init_second_moment(self, state: dict[str, Any], p: torch.Tensor) -> None:
        state["v"] = torch.zeros((), dtype=torch.float32, device=p.device)

    def _update_second_moment(self, state: dict[str, Any], g2d: torch.Tensor, mu2: float) -> None:
        norm = torch.linalg.vector_norm(g2d.float())
        state["v"].mul_(mu2).add_(norm * norm, alpha=1 - mu2)

    def _apply(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, u: torch.Tensor,
               o: torch.Tensor, base: float, shape_factor: float) -> None:
        alpha = base * torch.linalg.vector_norm(u.float()) / (state["v"].sqrt() + group["eps"])
        p.mul_((1 - group["weight_decay"] * alpha.clamp(max=1.0)).to(p.dtype))
        p.add_(o.view_as(p) * (alpha * shape_factor).clamp(max=1.0).to(p.dtype), alpha=-1.0)


class NAMOD(NAMO):
    """NAMO-D: one adaptive step per column, clamped towards the mean (see module docstring).

    Args:
        col_clamp: ``c_clamp`` in (0, 1] clamps each column's scale to ``[c mean, mean / c]``;
            0 disables it (default 0.75, the reference class default; its GPT-2 config uses 0.01).
        lr: default 9e-3 (the paper's GPT-2 small value). Other arguments as :class:`NAMO`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 9e-3,
        col_clamp: float = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self.defaults["col_clamp"] = col_clamp  # also used by add_param_group
        for group in self.param_groups:
            check_number("NAMOD", "col_clamp", group.setdefault("col_clamp", col_clamp), 0.0, 1.0)

    def _init_second_moment(self, state: dict[str, Any], p: torch.Tensor) -> None:
        state["v"] = torch.zeros(p[0].numel(), dtype=torch.float32, device=p.device)

    def _update_second_moment(self, state: dict[str, Any], g2d: torch.Tensor, mu2: float) -> None:
        col_norms = torch.linalg.vector_norm(g2d.float(), dim=0)
        state["v"].mul_(mu2).addcmul_(col_norms, col_norms, value=1 - mu2)

    def _apply(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, u: torch.Tensor,
               o: torch.Tensor, base: float, shape_factor: float) -> None:
        s = torch.linalg.vector_norm(u.float(), dim=0) / (state["v"].sqrt() + group["eps"])
        c = group["col_clamp"]
        if 0.0 < c <= 1.0:
            mean = _nanmean(s)
            if bool(torch.isfinite(mean)) and float(mean) > 0:
                s = s.clamp(min=float(mean) * c, max=float(mean) / c)
        p2 = p.view(p.shape[0], -1)
        decay = (1 - group["weight_decay"] * (s * base).clamp(max=1.0)).clamp(min=0.0)
        p2.mul_(decay.to(p.dtype))
        p2.add_(o * (s * base * shape_factor).clamp(max=1.0).to(p.dtype), alpha=-1.0)


PAPER = Paper("Adam Improves Muon: Adaptive Moment Estimation with Orthogonalized Momentum", "2602.17080", 2026)
SEARCH_SPACE = dict(lr=FloatRange(1e-3, 1e-1), weight_decay=FloatRange(1e-3, 0.3))

register_matrix_optimizer(
    "namo", NAMO,
    defaults=dict(lr=1e-2, momentum=0.95, mu2=0.99, nesterov=True, scale_coeff=0.2, weight_decay=0.1, ns_steps=5),
    search_space=SEARCH_SPACE,
    paper=PAPER,
    state_bytes=4.0,  # the momentum buffer; plus one float32 scalar per matrix
    description="Muon direction with an Adam-style norm-adaptive step per matrix; AdamW on the rest",
)
register_matrix_optimizer(
    "namo_d", NAMOD,
    defaults=dict(lr=9e-3, momentum=0.95, mu2=0.99, nesterov=True, scale_coeff=0.2, weight_decay=0.1, ns_steps=5,
                  col_clamp=0.75),
    search_space=SEARCH_SPACE,
    paper=PAPER,
    state_bytes=4.0,  # the momentum buffer; plus n float32 column statistics per m x n matrix
    description="NAMO with one adaptive step per input column, clamped towards the mean; AdamW on the rest",
)
