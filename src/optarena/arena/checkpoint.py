"""Checkpoint files of the arena: written atomically, checksummed, and loaded without running code.

A checkpoint is one file, ``<dir>/<key>.pt``: a header line ``optarena-checkpoint 1 sha256=<hex>``
followed by a ``torch.save`` payload ``{"key": <run key>, "state": <the run's state>}``. Loading
checks the header, then the SHA-256 of the payload, then unpickles it with
``torch.load(weights_only=True)`` (tensors, containers and plain numbers and strings only, so a
planted file cannot execute code), then the run key. A file that fails any check is removed with
one :class:`CheckpointWarning` naming it and the reason, and the run starts again from step 0.

The per-budget models of a WSD-S run (``<key>-budget<N>.pt``) are results for the user, not
resume points: plain ``torch.save`` state dicts (load them with ``torch.load(path, weights_only=True)``),
written atomically too.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointWarning", "Checkpoints", "read_checkpoint", "write_checkpoint"]

_MAGIC = b"optarena-checkpoint 1 sha256="


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message says why."""


class CheckpointWarning(UserWarning):
    """A checkpoint was discarded; the run restarts from step 0."""


def write_checkpoint(path: Path, key: str, state: dict[str, Any]) -> None:
    """Save ``state`` of the run ``key`` to ``path`` atomically: a kill never leaves a half-written file."""
    buffer = io.BytesIO()
    torch.save({"key": key, "state": state}, buffer)
    payload = buffer.getvalue()
    _atomic_write(path, _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """The state saved by :func:`write_checkpoint` for the run ``key``; :class:`CheckpointError` if unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"unreadable ({exc.strerror or exc})") from exc
    if not data:
        raise CheckpointError("empty file")
    header, newline, payload = data.partition(b"\n")
    if not (newline and header.startswith(_MAGIC)):
        raise CheckpointError("not an optarena checkpoint (no optarena-checkpoint header)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(_MAGIC):]:
        raise CheckpointError("checksum mismatch (truncated or altered)")
    try:
        content = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain data
        raise CheckpointError(f"payload refused by torch.load(weights_only=True): {_refusal(exc)}") from exc
    if not isinstance(content, dict) or not isinstance(content.get("state"), dict):
        raise CheckpointError("not an optarena checkpoint (no run state)")
    if content.get("key") != key:
        raise CheckpointError(f"belongs to another run (key {content.get('key')!r}, expected {key!r})")
    return content["state"]


class Checkpoints:
    """The resume point ``<dir>/<key>.pt`` of one run, and its WSD-S budget models."""

    def __init__(self, directory: Path, key: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path, self.key = directory / f"{key}.pt", key

    def load(self) -> dict[str, Any] | None:
        """The saved state; None when there is none or it was discarded (with a warning)."""
        if not self.path.exists():
            return None
        try:
            return read_checkpoint(self.path, self.key)
        except CheckpointError as exc:
            self.discard(str(exc))
            return None

    def save(self, state: dict[str, Any]) -> None:
        write_checkpoint(self.path, self.key, state)

    def save_budget_model(self, budget: int, model_state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(model_state, buffer)
        _atomic_write(self.path.with_name(f"{self.key}-budget{budget}.pt"), buffer.getvalue())

    def discard(self, why: str) -> None:
        """Remove the checkpoint with one warning line naming it and ``why``."""
        try:
            self.remove()
        except OSError as exc:  # the next save replaces it
            why = f"{why}; it could not be removed ({exc.strerror or exc})"
        warnings.warn(f"discarding checkpoint {self.path}: {why}; the run starts again from step 0",
                      CheckpointWarning, stacklevel=3)

    def remove(self) -> None:
        """Remove the checkpoint, and a partial write a kill left beside it."""
        self.path.unlink(missing_ok=True)
        _partial(self.path).unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _partial(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _refusal(exc: BaseException) -> str:
    """What torch refused, without its advice to load the file unsafely."""
    refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"unsupported global {refused.group(1)}" if refused else type(exc).__name__
