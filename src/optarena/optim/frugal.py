"""FRUGAL: AdamW on a chosen subspace of each gradient, state-free signSGD on the rest.

Zmushko, Beznosikov, Takáč, Horváth, "FRUGAL: Memory-Efficient Optimization by Reducing
State Overhead for Scalable Training" (arXiv:2411.07837); reference code
philip-zmushko/FRUGAL (read from the mirror hungquangbui02022003/FRUGAL at 08f5142:
``frugal/proj_optimizer_templates.py``, ``adamw.py``, ``galore_projector.py``,
``coordinate_projector.py``).

For each hidden matrix ``W`` (m x n, conv weights flattened to ``(out, -1)``), every
``update_gap`` steps (and at the first) a new subspace is chosen, and with
``reset_statistics`` the Adam moments and their bias-correction counter restart. Each step::

    W <- W (1 - lr wd)
    g_lo   <- Down(g)                                   # the state-full part
    W <- W - lr proj_lr_scale Up(AdamW direction of g_lo)
    g_free <- g - Up(Down(g))                           # the residual
    W <- W - lr proj_lr_scale inactive_lr_scale sign(g_free)     # "sign_sgd" (or "sgd", or "none")

``projection`` chooses ``Down``/``Up``:

- ``"svd"`` (GaLore-style): the top ``r = round(density * min(m, n))`` singular vectors of
  the current gradient on its shorter side (``Down(g) = P^T g`` for m <= n, ``g P`` otherwise);
- ``"random"``: a random orthonormal ``P`` of the same shape (QR of a Gaussian matrix);
- ``"randperm"``: ``r`` random rows (m <= n) or columns of the gradient, stored as indices;
- ``"blockwise"`` (the paper's main results): ``round(density * #matrices)`` whole matrices
  are active and get full AdamW, the rest signSGD; ``block_order`` ``"random"``,
  ``"ascending"`` or ``"descending"`` walks through them (a deactivated matrix frees its state).

Optimizer state lives only on the subspace: ``2 r n`` floats (+ the ``m r`` projector) for
an m x n matrix with m <= n under svd/random, ``2 r n`` (+ ``r`` indices) under randperm,
and ``2 m n`` for the active fraction under blockwise — about ``2 density`` floats per
parameter. Embeddings, readout and vectors (non-projectable) get plain AdamW with the same
betas (``matrix=False`` groups). The optimizer's own generator (seeded by ``seed``, kept
in ``state_dict``) draws the random subspaces, so a restored run continues exactly.
Deviation: the reference's ``"mirror"`` block order and the coordinate ``randk`` projector
are not included.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim._foreach import collect_grads
from optarena.optim.matrix_family import MatrixOptimizer, register_matrix_optimizer
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_choice, check_int, check_nonnegative, check_number, check_positive

__all__ = ["FRUGAL"]

PROJECTIONS = ("svd", "random", "randperm", "blockwise")
BLOCK_ORDERS = ("random", "ascending", "descending")
INACTIVE_RULES = ("sign_sgd", "sgd", "none")


class FRUGAL(MatrixOptimizer):
    """FRUGAL (see module docstring); plain AdamW on ``matrix=False`` groups.

    Args:
        lr: learning rate (default 1e-3).
        betas, eps: AdamW on the subspace (and on ``matrix=False`` groups).
        weight_decay: decoupled, times the raw lr (default 0).
        density: fraction of the rank (svd/random/randperm) or of the matrices (blockwise)
            that is state-full, in (0, 1] (default 0.25).
        update_gap: steps between subspace changes (default 200).
        projection: ``"svd"``, ``"random"``, ``"randperm"`` or ``"blockwise"`` (default ``"blockwise"``).
        block_order: order in which blockwise activates matrices (default ``"random"``).
        inactive_update_rule: ``"sign_sgd"`` (default), ``"sgd"`` or ``"none"`` on the residual.
        inactive_lr_scale: multiplier of the residual step (1.0 for pre-training, 0.1 for fine-tuning).
        proj_lr_scale: multiplier of the whole matrix step (default 1.0).
        reset_statistics: zero the Adam moments when the subspace changes (default True).
        seed: seed of the optimizer's generator.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density: float = 0.25,
        update_gap: int = 200,
        projection: str = "blockwise",
        block_order: str = "random",
        inactive_update_rule: str = "sign_sgd",
        inactive_lr_scale: float = 1.0,
        proj_lr_scale: float = 1.0,
        reset_statistics: bool = True,
        seed: int = 0,
        foreach: bool = True,
    ) -> None:
        check_number("FRUGAL", "density", density, 0.0, 1.0, low_open=True)
        check_int("FRUGAL", "update_gap", update_gap, 1)
        check_choice("FRUGAL", "projection", projection, PROJECTIONS)
        check_choice("FRUGAL", "block_order", block_order, BLOCK_ORDERS)
        check_choice("FRUGAL", "inactive_update_rule", inactive_update_rule, INACTIVE_RULES)
        check_nonnegative("FRUGAL", "inactive_lr_scale", inactive_lr_scale)
        check_positive("FRUGAL", "proj_lr_scale", proj_lr_scale)
        check_int("FRUGAL", "seed", seed, 0)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, density=density, update_gap=update_gap,
            projection=projection, block_order=block_order, inactive_update_rule=inactive_update_rule,
            inactive_lr_scale=inactive_lr_scale, proj_lr_scale=proj_lr_scale, reset_statistics=reset_statistics,
        )
        # the non-projectable parameters get the same AdamW as the subspace
        super().__init__(params, defaults, adamw_betas=betas, adamw_eps=eps, foreach=foreach)
        self._generator = torch.Generator().manual_seed(seed)
        self._global_step = 0
        self._active_blocks: set[int] = set()  # blockwise: positions (in matrix-parameter order) of active matrices

    # ---- subspace selection ----
    def _matrix_params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups if g["matrix"] for p in g["params"]]

    def _choose_blocks(self, group: dict[str, Any]) -> None:
        params = self._matrix_params()
        count = len(params)
        k = min(count, max(1, round(group["density"] * count)))
        round_index = self._global_step // group["update_gap"]
        order = group["block_order"]
        if order == "random":
            chosen = torch.randperm(count, generator=self._generator)[:k].tolist()
        elif order == "ascending":
            chosen = [(round_index * k + j) % count for j in range(k)]
        else:
            chosen = [(count - 1 - (round_index * k + j)) % count for j in range(k)]
        self._active_blocks = set(chosen)
        for position, p in enumerate(params):
            if position not in self._active_blocks:
                for key in ("step", "exp_avg", "exp_avg_sq"):  # deactivating a matrix frees its state
                    self.state[p].pop(key, None)
            elif group["reset_statistics"]:
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    self.state[p].pop(key, None)

    def _choose_projector(self, state: dict[str, Any], G: torch.Tensor, group: dict[str, Any]) -> None:
        m, n = G.shape
        left = m <= n  # project the shorter side
        rank = max(1, round(group["density"] * min(m, n)))
        kind = group["projection"]
        if kind == "svd":
            U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
            basis = U[:, :rank] if left else Vh[:rank].mT
        elif kind == "random":
            gaussian = torch.randn(min(m, n), rank, generator=self._generator, dtype=torch.float32)
            basis = torch.linalg.qr(gaussian).Q
        else:
            basis = torch.randperm(min(m, n), generator=self._generator)[:rank].sort().values
        if kind == "randperm":
            state["projector"] = basis.to(G.device)
        else:
            state["projector"] = basis.to(device=G.device, dtype=torch.promote_types(G.dtype, torch.float32))
        state["left"] = left
        if group["reset_statistics"] or "exp_avg" not in state:
            for key in ("step", "exp_avg", "exp_avg_sq"):
                state.pop(key, None)

    @staticmethod
    def _down(state: dict[str, Any], G: torch.Tensor) -> torch.Tensor:
        P = state["projector"]
        if P.dtype == torch.int64:
            return G[P] if state["left"] else G[:, P]
        return P.mT @ G if state["left"] else G @ P

    @staticmethod
    def _up(state: dict[str, Any], low: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        P = state["projector"]
        if P.dtype == torch.int64:
            full = low.new_zeros(shape)
            if state["left"]:
                full[P] = low
            else:
                full[:, P] = low
            return full
        return P @ low if state["left"] else low @ P.mT

    # ---- the step ----
    def _before_step(self) -> None:
        # blockwise selection is global: it follows the first matrix group's density, gap and order
        matrix_groups = [g for g in self.param_groups if g["matrix"]]
        if matrix_groups and matrix_groups[0]["projection"] == "blockwise":
            if self._global_step % matrix_groups[0]["update_gap"] == 0:
                self._choose_blocks(matrix_groups[0])

    def _after_step(self, loss: Any) -> None:
        self._global_step += 1

    def _adam_direction(self, state: dict[str, Any], g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
        state["step"] += 1
        t = int(state["step"])
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        return state["exp_avg"] / (1 - beta1**t) / denom

    def _matrix_group(self, group: dict[str, Any]) -> None:
        params, grads = collect_grads("FRUGAL", group["params"])
        if not params:
            return
        lr, scale = group["lr"], group["proj_lr_scale"]
        free_lr = lr * scale * group["inactive_lr_scale"]
        positions = {id(p): i for i, p in enumerate(self._matrix_params())}
        for p, g in zip(params, grads):
            state = self.state[p]
            if group["weight_decay"] != 0:
                p.mul_(1 - lr * group["weight_decay"])
            G = g.reshape(g.shape[0], -1)
            if group["projection"] == "blockwise":
                if positions[id(p)] in self._active_blocks:
                    p.add_(self._adam_direction(state, g, group), alpha=-lr * scale)
                    continue
                residual = G
            else:
                if self._global_step % group["update_gap"] == 0 or "projector" not in state:
                    self._choose_projector(state, G, group)
                work = G.to(state["projector"].dtype) if state["projector"].is_floating_point() else G
                low = self._down(state, work)
                p.add_(self._up(state, self._adam_direction(state, low, group), work.shape).view_as(p).to(p.dtype),
                       alpha=-lr * scale)
                residual = (work - self._up(state, low, work.shape)).to(p.dtype)
            rule = group["inactive_update_rule"]
            if rule == "sign_sgd":
                # + 0 residual: a NaN or inf gradient reaches θ (torch.sign(NaN) is 0)
                p.add_(residual.sign().add_(residual, alpha=0).view_as(p), alpha=-free_lr)
            elif rule == "sgd":
                p.add_(residual.view_as(p), alpha=-free_lr)

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "global_step": self._global_step,
                "active_blocks": sorted(self._active_blocks)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._generator.set_state(extra["generator"])
        self._global_step = int(extra["global_step"])
        self._active_blocks = set(extra["active_blocks"])

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state on matrix groups vs elsewhere, and the matrix parameters' size."""
        matrix_ids = {id(p) for p in self._matrix_params()}
        out = {"matrix_state": 0, "other_state": 0, "matrix_params": 0}
        for p in self._matrix_params():
            out["matrix_params"] += p.numel() * p.element_size()
        for p, state in self.state.items():
            size = sum(v.numel() * v.element_size() for k, v in state.items() if torch.is_tensor(v) and k != "step")
            out["matrix_state" if id(p) in matrix_ids else "other_state"] += size
        return out


register_matrix_optimizer(
    "frugal", FRUGAL,
    family="memory-efficient",
    defaults=dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, density=0.25, update_gap=200,
                  projection="blockwise", block_order="random", inactive_update_rule="sign_sgd",
                  inactive_lr_scale=1.0, seed=0),
    adamw_lr=1e-3,
    search_space=dict(lr=FloatRange(1e-4, 1e-2), inactive_lr_scale=FloatRange(0.01, 1.0)),
    state_bytes=2.0,  # 2 * density * 4 bytes on hidden matrices at density 0.25 (+ projector)
    paper=Paper("FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
                "2411.07837", 2024),
    description="AdamW on a subspace (blockwise / SVD / random) of each hidden matrix, signSGD on the rest",
)
