"""SCALE: column-normalised SGD, with momentum only on the last layer.

"A Minimalist Optimizer Design for LLM Pretraining"
(arXiv:2506.16659); reference code OptimAI-Lab/Minimalist_LLM_Pretraining
(``pt_scale/scale_optimizer.py``).

Each parameter group has a ``role`` (set by :func:`optarena.optim.create_optimizer` from
:mod:`optarena.optim.partition`; ``None`` infers ``"hidden"`` for tensors with two or more
dimensions and ``"vector"`` otherwise):

- ``"hidden"``: ``u = G / max(rms_row(G), 1e-8)``, each output row of the ``(out, -1)``
  view scaled to unit RMS (the paper's column normalisation in its ``d_in x d_out``
  convention); no momentum, no state.
- ``"embedding"``: the same, normalising each embedding dimension over the vocabulary
  (``dim=0`` of ``[vocab, d]``), as the reference does for ``embed_tokens``.
- ``"readout"``: ``M <- b M + (1 - b) G``, then ``u = M / max(rms_row(M), 1e-8)``: the
  only momentum buffer of the method.
- ``"vector"``: AdamW (``adamw_betas``, ``adamw_eps``, bias-corrected) with the group's own
  ``lr``; :func:`create_optimizer` sets it to ``adamw_lr``, and any LR scheduler scales it
  by the same factor as the matrix learning rate, which is the reference's
  ``adam_lr * lr_t / lr_max``.

Matrix groups then take ``θ <- θ (1 - lr wd) - lr u``. The RMS (not the L2 norm) puts
``lr`` on Adam's scale. Deviations from the reference: its AdamW rule puts ``eps`` before
the bias correction (``m / (sqrt(v) + eps)``); ours is ``torch.optim.AdamW``'s. Every
``nn.Embedding`` is normalised per column (the reference only does so for parameters
named ``embed_tokens``). A weight tied between embedding and head counts as embedding
(no momentum); the paper's models are untied.

State: none on hidden matrices (the figure the registry reports), one buffer on the
readout, two on vectors.

``fused=True`` runs the matrix updates of large CPU float32 tensors in C
(:mod:`optarena.optim.kernels.rms`), reading each row from memory once.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim._foreach import GroupwiseOptimizer, adamw_rule, group_by_device_dtype, zeros_state
from optarena.optim.kernels import rms
from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_choice, check_hparams

__all__ = ["SCALE", "SCALE_ROLES"]

SCALE_ROLES = ("hidden", "embedding", "readout", "vector", None)


# Eager under torch.compile: in a whole step's graph, Inductor's CPU outer-loop fusion of these
# reductions with the update fails to compile ("KeyError: 'buf..'" in get_read_expr, torch 2.13)
@torch._dynamo.disable
def _rms_normalize_step(p: torch.Tensor, direction: torch.Tensor, dim: int, lr: float, weight_decay: float) -> None:
    """θ <- θ (1 - lr wd) - lr direction / max(rms over ``dim``, 1e-8) on the (rows, -1) view."""
    d2 = direction.reshape(direction.shape[0], -1)
    acc = torch.promote_types(direction.dtype, torch.float32)
    if dim == 1:
        sq = torch.linalg.vector_norm(d2, dim=1, keepdim=True, dtype=acc).square_()
    else:  # column sums of squares: a dot product per column, not a strided norm over dim 0
        cols = d2.to(acc).t()
        sq = torch.linalg.vecdot(cols, cols, dim=1).unsqueeze(0)
    rms = sq.div_(d2.shape[dim]).sqrt_().clamp_min_(1e-8).to(direction.dtype)
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    p.view(d2.shape).addcdiv_(d2, rms, value=-lr)


class SCALE(GroupwiseOptimizer):
    """SCALE (see module docstring).

    Args:
        params: tensors or param-group dicts (each may carry ``role``).
        lr: learning rate of the normalised updates (>= 0, default 1e-3).
        momentum: EMA coefficient of the readout momentum, in [0, 1) (default 0.9).
        weight_decay: decoupled, multiplied by lr (default 0).
        adamw_betas, adamw_eps: the AdamW rule of ``"vector"`` groups.
        role: default role of groups that do not set one (default None: infer per tensor).
        fused: C kernels for large CPU float32 matrices (default False; compiles them at the
            first step, see the module docstring).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        role: str | None = None,
        fused: bool = False,
    ) -> None:
        check_hparams("SCALE", lr=lr, momentum=momentum, weight_decay=weight_decay, adamw_betas=adamw_betas,
                      adamw_eps=adamw_eps)
        check_choice("SCALE", "role", role, SCALE_ROLES)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, adamw_betas=tuple(adamw_betas),
                        adamw_eps=adamw_eps, role=role, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_choice("SCALE", "role", group["role"], SCALE_ROLES)
            if group["role"] in ("hidden", "embedding", "readout"):
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError(f"SCALE {group['role']} groups take tensors with ndim >= 2, got shape "
                                         f"{tuple(p.shape)}; put it in a group with role='vector'")

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        lr, wd, role = group["lr"], group["weight_decay"], group["role"]
        vec_params, vec_grads = [], []
        for p, g in zip(params, grads):
            kind = role if role is not None else ("hidden" if p.ndim >= 2 else "vector")
            if kind == "vector":
                vec_params.append(p)
                vec_grads.append(g)
            elif kind == "readout":
                buf = zeros_state(self, [p], "momentum_buffer")[0][0]
                if group.get("fused") and rms.takes(p, g, buf):
                    rms.row_rms_step(p, g, buf, weight=1 - group["momentum"], lr=lr, decay=lr * wd)
                    continue
                buf.lerp_(g, 1 - group["momentum"])
                _rms_normalize_step(p, buf, dim=1, lr=lr, weight_decay=wd)
            elif group.get("fused") and rms.takes(p, g):
                if kind == "embedding":
                    rms.col_rms_step(p, g, lr=lr, decay=lr * wd)
                else:
                    rms.row_rms_step(p, g, None, weight=0.0, lr=lr, decay=lr * wd)
            else:
                _rms_normalize_step(p, g, dim=0 if kind == "embedding" else 1, lr=lr, weight_decay=wd)
        if vec_params:
            self._adamw_vectors(group, vec_params, vec_grads)

    def _adamw_vectors(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        group["adamw_step"] = step = group.get("adamw_step", 0) + 1
        exp_avgs, exp_avg_sqs = zeros_state(self, params, "exp_avg", "exp_avg_sq")
        for chunk in group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs):
            adamw_rule(*chunk, step=step, lr=group["lr"], betas=group["adamw_betas"], eps=group["adamw_eps"],
                       weight_decay=group["weight_decay"])


def _scale_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """One group per role; vectors get ``adamw_lr`` and no weight decay."""
    groups = [
        {"params": [p for _, p in partition.hidden], "names": [n for n, _ in partition.hidden],
         "role": "hidden"},
        {"params": [p for _, p in partition.embedding], "names": [n for n, _ in partition.embedding],
         "role": "embedding"},
        {"params": [p for _, p in partition.readout], "names": [n for n, _ in partition.readout],
         "role": "readout"},
        {"params": [p for _, p in partition.vector], "names": [n for n, _ in partition.vector],
         "role": "vector", "lr": args["adamw_lr"], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


register(
    OptimizerSpec(
        name="scale",
        cls=SCALE,
        family="elementwise",
        defaults=dict(lr=1e-3, momentum=0.9, weight_decay=0.0),
        builder_defaults=dict(adamw_lr=1e-3),
        search_space=dict(lr=FloatRange(1e-4, 1e-2), adamw_lr=FloatRange(3e-4, 3e-2)),
        state_bytes=0.0,
        paper=Paper("A Minimalist Optimizer Design for LLM Pretraining", "2506.16659", 2025),
        description="row-RMS-normalised SGD; momentum only on the readout, AdamW on vectors",
        build_groups=_scale_groups,
    )
)
