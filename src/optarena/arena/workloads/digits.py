"""``digits``: an MLP on scikit-learn's bundled 8x8 handwritten digits.

The data are the 1,797 grey-scale 8x8 images of the UCI "Optical Recognition of
Handwritten Digits" test set (Alpaydin & Kaynak, 1998) that ship inside the
scikit-learn wheel (``sklearn.datasets.load_digits``): nothing is downloaded. It is the
smallest real image-classification problem we know of, the CPU stand-in for the
``mnist`` development workload of MLCommons AlgoPerf.

- Split: fixed and stratified, 20% of every class (rounded) to validation (359 images)
  and the rest to training (1,438), drawn once from a fixed seed; the run seed does not
  change it.
- Inputs: the 64 pixel intensities standardised with the training split's per-pixel
  mean and standard deviation (pixels constant over the training split are only
  centred). Nothing else (no augmentation).
- Model: ``depth`` GELU layers of ``width`` units (``layers.0``, ``layers.1``, ...;
  hidden matrices for :func:`optarena.optim.partition_parameters`) and a linear readout
  ``head`` to the 10 classes, with PyTorch's default initialisation under the run seed.
- Batches: 64 training images per step, without replacement epoch by epoch; ``tokens_per_step``
  counts images.

Scales ``small`` / ``base`` differ only in width (64 / 256). ``evaluate`` returns the
validation cross-entropy (nats) as ``"loss"`` and the validation accuracy as ``"accuracy"``.
``build(scale, seed, **overrides)`` accepts any :class:`DigitsConfig` field.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads._shuffle import epoch_batch_indices
from optarena.arena.workloads.base import ConfiguredWorkload, Task, classification_losses, seeded_model

__all__ = ["DigitsConfig", "DigitsMLP", "DigitsWorkload", "SCALES", "load_split"]

N_CLASSES = 10
N_PIXELS = 64
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 42


@dataclass(frozen=True)
class DigitsConfig:
    width: int = 64
    depth: int = 2  # hidden layers
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("width", "depth", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DigitsConfig.{name} must be a positive integer, got {name}={value!r}")


SCALES: dict[str, dict[str, Any]] = {"small": {"width": 64}, "base": {"width": 256}}
DEFAULT_STEPS = {"small": 400, "base": 400}


def load_split() -> dict[str, Any]:
    """The fixed split: standardised float32 inputs, int64 labels, and a fingerprint of the raw data."""
    from sklearn.datasets import load_digits  # the data ship inside the scikit-learn wheel

    bunch = load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float64)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    generator = generator_for(SPLIT_SEED, 0, "digits-split")
    validation = torch.zeros(labels.numel(), dtype=torch.bool)
    for digit in range(N_CLASSES):
        members = torch.nonzero(labels == digit).squeeze(1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        validation[members[: round(VALIDATION_FRACTION * members.numel())]] = True
    train_images = images[~validation]
    mean, std = train_images.mean(0), train_images.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    standardise = lambda x: ((x - mean) / std).float()  # noqa: E731
    digest = hashlib.sha256(bunch.data.astype("<f8").tobytes() + bunch.target.astype("<i8").tobytes()).hexdigest()
    return {
        "x_train": standardise(train_images), "y_train": labels[~validation],
        "x_val": standardise(images[validation]), "y_val": labels[validation],
        "train_index": torch.nonzero(~validation).squeeze(1), "val_index": torch.nonzero(validation).squeeze(1),
        "sha256": digest,
    }


class DigitsMLP(nn.Module):
    """``forward(x)`` maps (B, 64) standardised pixels to (B, 10) logits."""

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__()
        sizes = [N_PIXELS] + [config.width] * config.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(config.width, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.gelu(layer(x))
        return self.head(x)


class DigitsWorkload(ConfiguredWorkload):
    """MLP classification of 8x8 digits; ``evaluate`` returns the validation cross-entropy and accuracy."""

    name = "digits"
    scales = tuple(SCALES)
    steps_by_scale = DEFAULT_STEPS
    metric = "validation cross-entropy (nats)"
    config_class = DigitsConfig
    presets = SCALES

    def build(self, scale: str = "small", seed: int = 0, **overrides: Any) -> Task:
        config = self.config(scale, **overrides)
        data = load_split()
        x_train, y_train, x_val, y_val = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
        model = seeded_model(seed, lambda: DigitsMLP(config))

        def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = epoch_batch_indices(seed, step, y_train.numel(), config.batch_size, "digits")
            return x_train[index], y_train[index]

        def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            weight = model.head.weight
            return model(x.to(weight.device, weight.dtype)).float()

        def forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch
            logits = _logits(model, x)
            return logits, y.to(logits.device)

        loss, sampled_loss = classification_losses(forward)

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            logits, targets = forward(model, (x_val, y_val))
            return {"loss": float(F.cross_entropy(logits, targets)),
                    "accuracy": float((logits.argmax(-1) == targets).float().mean())}

        info = {
            "scale": scale,
            "config": asdict(config),
            "data": "sklearn.datasets.load_digits (UCI optdigits test set, 8x8)",
            "data_sha256": data["sha256"],
            "n_train": y_train.numel(),
            "n_validation": y_val.numel(),
            "split_seed": SPLIT_SEED,
            "params_total": sum(p.numel() for p in model.parameters()),
        }
        return Task(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                    tokens_per_step=config.batch_size, sampled_loss=sampled_loss, info=info)


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(DigitsWorkload())
