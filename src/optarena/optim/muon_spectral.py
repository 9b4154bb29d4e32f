"""Muon with muP spectral scaling: a RECONSTRUCTION, not the published "Muon++".

Motivated by Zhao, "Towards a Principled Muon under muP: Ensuring Spectral Conditions
throughout Training" (arXiv:2601.01306). Only that paper's abstract was available when
this was written, so this module ships under a descriptive name
(``muon_spectral``), not under the paper's name. What the abstract states: for moderately
large models, controlling the spectral norm of the *update* is enough to keep the muP
spectral conditions ``||W||_2 = Theta(sqrt(d_out/d_in))`` and
``||dW||_2 = Theta(sqrt(d_out/d_in))`` (Yang, Simon & Bernstein, "A Spectral Condition for
Feature Learning", arXiv:2310.17813) for the whole of training, without normalising the
weights. Our reconstruction, per hidden matrix ``W`` (d_out x d_in)::

    M <- beta M + (1 - beta) G;   U <- Nesterov blend of M and G
    O <- NewtonSchulz5(U)                          # ||O||_2 ~ 1 (<= ~1.2 with the NS5 coefficients)
    W <- (1 - lr wd) W - lr sqrt(d_out / d_in) O   # ||dW||_2 ~ lr sqrt(d_out/d_in)

Unrolling the recursion, ``||W_t||_2 <= (1 - lr wd)^t ||W_0||_2 + max||O||_2 sqrt(d_out/d_in) / wd``,
so a weight decay of order one (default 1.0) keeps ``||W||_2 = Theta(sqrt(d_out/d_in))``
at every width. Differences from Muon: the scale ``sqrt(d_out/d_in)`` (not
``sqrt(max(1, d_out/d_in))``), a weight decay of order one by default, and
:meth:`MuonSpectral.spectral_ratios` to check the condition during training. NOT
reconstructed (not in the abstract): the paper's adaptive, data-dependent variant of the
condition and anything about spectral gaps.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from optarena.optim.matrix_family import register_matrix_optimizer
from optarena.optim.muon import Muon, muon_scale
from optarena.optim.registry import FloatRange, Paper

__all__ = ["MuonSpectral"]


class MuonSpectral(Muon):
    """Muon with ``scale="spectral"`` and order-one weight decay (see module docstring).

    Takes every :class:`~optarena.optim.Muon` argument; the defaults differ in
    ``scale="spectral"`` and ``weight_decay=1.0``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        weight_decay: float = 1.0,
        scale: str = "spectral",
        **kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, scale=scale, **kwargs)

    @torch.no_grad()
    def spectral_ratios(self) -> list[float]:
        """``||W||_2 / sqrt(d_out/d_in)`` for every matrix-group parameter (exact, by SVD); muP wants Theta(1)."""
        ratios = []
        for group in self.param_groups:
            if not group["matrix"]:
                continue
            for p in group["params"]:
                W = p.detach().reshape(p.shape[0], -1).to(torch.promote_types(p.dtype, torch.float32))
                ratios.append(float(torch.linalg.matrix_norm(W, ord=2)) / muon_scale(p.shape, "spectral"))
        return ratios


register_matrix_optimizer(
    "muon_spectral", MuonSpectral,
    defaults=dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=1.0, scale="spectral"),
    search_space=dict(lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(0.1, 3.0)),
    paper=Paper("Towards a Principled Muon under muP: Ensuring Spectral Conditions throughout Training "
                "(reconstruction from the abstract)", "2601.01306", 2026),
    description="Muon with the muP spectral update scale sqrt(d_out/d_in) and order-one weight decay "
                "(reconstructed from the abstract; not the paper's Muon++)",
)
