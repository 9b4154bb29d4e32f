"""Deterministic random streams for workloads: one generator per (seed, step, stream).

Batches must be a pure function of (seed, step) so that a resumed run sees exactly the
data it would have seen. Seeding a ``torch.Generator`` with ``seed * K + step`` would make
different pairs collide, so the pair is hashed instead.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["generator_for"]


def generator_for(seed: int, step: int, stream: str = "train") -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, stream)``; equal inputs give equal draws."""
    digest = hashlib.blake2b(f"{stream}:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator
