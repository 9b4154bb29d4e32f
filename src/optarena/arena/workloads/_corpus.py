"""The byte corpus shipped with the package, loaded once per process and split once.

See ``optarena/arena/data/README.md`` for its provenance and licence. The split is fixed:
the last ``VALIDATION_FRACTION`` of the bytes are validation and are never trained on.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DATA_DIR", "SHAKESPEARE_SHA256", "VALIDATION_FRACTION", "ByteCorpus", "load_corpus"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHAKESPEARE_FILE = "shakespeare.txt.gz"
SHAKESPEARE_SHA256 = "b8f12da576d58e86ed35563153e5125a1006e9fc0ba56d5de09e0b7dbd512a07"
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class ByteCorpus:
    """A text as bytes (``uint8`` tensors) with its fixed train / validation split."""

    name: str
    train: torch.Tensor
    validation: torch.Tensor
    sha256: str  # of the uncompressed text

    @property
    def n_bytes(self) -> int:
        return self.train.numel() + self.validation.numel()


@functools.lru_cache(maxsize=None)
def load_corpus(file_name: str = SHAKESPEARE_FILE) -> ByteCorpus:
    """Decompress ``data/<file_name>`` and split it; cached, so later calls cost nothing.

    The returned tensors are shared by every caller: treat them as read-only.
    """
    path = DATA_DIR / file_name
    if not path.is_file():
        raise FileNotFoundError(f"corpus {file_name!r} not found in {DATA_DIR}; the package data is incomplete")
    text = gzip.decompress(path.read_bytes())
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    n_train = int(len(text) * (1.0 - VALIDATION_FRACTION))
    return ByteCorpus(
        name=file_name.removesuffix(".gz"),
        train=data[:n_train],
        validation=data[n_train:],
        sha256=hashlib.sha256(text).hexdigest(),
    )
