"""torch.optim's AdamW and SGD with momentum, registered with their metadata as baselines.

torch checks neither finiteness nor ``betas < 1``, so ``create_optimizer`` validates their
hyperparameters with the conventions every optimizer here follows (:mod:`optarena.validation`).
"""

from __future__ import annotations

import torch

from optarena.optim.registry import FloatRange, OptimizerSpec, Paper, register
from optarena.validation import check_conventional

__all__: list[str] = []

register(
    OptimizerSpec(
        name="adamw",
        cls=torch.optim.AdamW,
        family="elementwise",
        defaults=dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=True),
        search_space=dict(lr=FloatRange(3e-4, 3e-2), weight_decay=FloatRange(1e-3, 0.3)),
        state_bytes=8.0,
        paper=Paper("Decoupled Weight Decay Regularization", "1711.05101", 2019),
        description="torch.optim.AdamW: Adam with decoupled weight decay (the baseline)",
        validate=check_conventional,
    )
)

register(
    OptimizerSpec(
        name="sgd",
        cls=torch.optim.SGD,
        family="elementwise",
        defaults=dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0, foreach=True),
        search_space=dict(lr=FloatRange(3e-3, 3.0), weight_decay=FloatRange(1e-6, 1e-3)),
        state_bytes=4.0,
        paper=Paper("On the importance of initialization and momentum in deep learning", None, 2013),
        description="torch.optim.SGD with Nesterov momentum (Sutskever et al., ICML 2013)",
        validate=check_conventional,
    )
)
