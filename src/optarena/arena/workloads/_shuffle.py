"""Minibatches from a fixed training set, drawn without replacement epoch by epoch.

Step ``s`` takes positions ``[s·B, (s+1)·B)`` of the endless sequence formed by
concatenating one random permutation of the ``n`` examples per epoch. The permutation of
epoch ``e`` comes from :func:`generator_for` with ``(seed, e, stream)``, so a batch is a
pure function of ``(seed, step)`` and a resumed run sees exactly the examples it would
have seen, without replaying earlier steps.
"""

from __future__ import annotations

import torch

from optarena.arena.workloads._random import generator_for

__all__ = ["epoch_batch_indices"]


def epoch_batch_indices(seed: int, step: int, n_examples: int, batch_size: int, stream: str) -> torch.Tensor:
    """Indices (int64, shape ``(batch_size,)``) of the examples that step ``step`` trains on."""
    if n_examples < 1 or batch_size < 1 or step < 0:
        raise ValueError(
            f"need n_examples >= 1, batch_size >= 1 and step >= 0, got "
            f"n_examples={n_examples}, batch_size={batch_size}, step={step}"
        )
    start = step * batch_size
    end = start + batch_size
    pieces = []
    for epoch in range(start // n_examples, (end - 1) // n_examples + 1):
        order = torch.randperm(n_examples, generator=generator_for(seed, epoch, f"{stream}-epoch"))
        lo = max(start - epoch * n_examples, 0)
        hi = min(end - epoch * n_examples, n_examples)
        pieces.append(order[lo:hi])
    return torch.cat(pieces)
