"""``modular``: modular addition, the grokking probe.

Power et al., "Grokking: Generalization Beyond Overfitting on Small Algorithmic
Datasets" (arXiv:2201.02177): a network trained on a fixed fraction of the table
(a + b) mod p first memorises its training pairs and generalises to the rest much later,
if at all; how soon depends strongly on the optimizer and its weight decay, which makes
the table a sharp probe of training dynamics. Every pair (a, b) with 0 ≤ a, b < p is one
example; a fixed random ``train_fraction`` of the p² pairs is the training set and the
rest the validation set (the split comes from a fixed seed, not the run seed).

Two models, one per scale:

- ``mlp`` (p = 97, Power et al.'s modulus): a shared embedding of a and b
  (``embed``, an ``nn.Embedding``), their concatenation through ``depth`` GELU layers of
  ``width`` units (``layers.0``, ...), and a readout ``head`` to the p classes; in the
  style of the embedding-plus-MLP models of Liu et al., "Towards Understanding
  Grokking: An Effective Theory of Representation Learning" (arXiv:2205.10343).
- ``transformer`` (p = 113): the one-layer transformer (attention, then a ReLU MLP) of Nanda
  et al., "Progress measures for grokking via mechanistic interpretability"
  (arXiv:2301.05217): input tokens (a, b, =), learned token and position embeddings
  (``embed``, ``pos_embed``), 4 heads, no LayerNorm, and the readout ``head``
  applied to the last position.

Batches are 512 training pairs per step without replacement, epoch by epoch, as in Power
et al. (Nanda et al. use the full batch). ``evaluate`` returns the validation
cross-entropy (nats) over all held-out pairs as ``"loss"`` and the validation accuracy as
``"accuracy"``. Both scales train on half of the table.

How soon the validation loss falls after memorisation depends strongly on the weight decay,
as the grokking papers report: the tuned AdamW of the arena generalises on both scales
within the default budgets only with a large weight decay (about 1).

Deviations, and why: Power et al. train a two-layer transformer for 10⁵ steps, and Nanda
et al. a one-layer one with d_model = 128 on 30% of the table for 40,000 full-batch
epochs; to run in seconds on a CPU our transformer has d_model = 64 and MLP width 256 and
trains on 50% of the table (on 30% it is still memorising at the end of a CPU-sized
budget). Nanda et al. apply the MLP at every position; only the "=" position reaches the
readout of a one-layer model, so we apply it there alone (the logits are the same).
``build(scale, seed, **overrides)`` accepts any :class:`ModularConfig` field (e.g.
``train_fraction`` or ``modulus``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads._shuffle import epoch_batch_indices
from optarena.arena.workloads.base import ConfiguredWorkload, Task, classification_losses, seeded_model

__all__ = ["ModularConfig", "ModularMLP", "ModularTransformer", "ModularWorkload", "SCALES", "make_split"]

SPLIT_SEED = 42


@dataclass(frozen=True)
class ModularConfig:
    model: str = "mlp"  # "mlp" | "transformer"
    modulus: int = 97
    train_fraction: float = 0.5
    d_embed: int = 64  # embedding width (d_model for the transformer)
    width: int = 256  # MLP hidden width
    depth: int = 1  # MLP hidden layers (the "mlp" model only)
    n_head: int = 4  # the "transformer" model only
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.model not in ("mlp", "transformer"):
            raise ValueError(f"ModularConfig.model must be 'mlp' or 'transformer', got model={self.model!r}")
        for name in ("modulus", "d_embed", "width", "depth", "n_head", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModularConfig.{name} must be a positive integer, got {name}={value!r}")
        if self.modulus < 2:
            raise ValueError(f"ModularConfig.modulus must be >= 2, got modulus={self.modulus}")
        fraction = self.train_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"ModularConfig.train_fraction must be in (0, 1), got train_fraction={fraction!r}")
        if not 1 <= self.n_train < self.modulus**2:
            raise ValueError(f"ModularConfig.train_fraction={fraction} leaves an empty training or validation set")
        if self.model == "transformer" and self.d_embed % self.n_head != 0:
            raise ValueError(
                f"ModularConfig.d_embed must be a multiple of n_head, got d_embed={self.d_embed}, n_head={self.n_head}"
            )

    @property
    def n_train(self) -> int:
        return round(self.train_fraction * self.modulus**2)


SCALES: dict[str, dict[str, Any]] = {
    "mlp": {"model": "mlp", "modulus": 97},
    "transformer": {"model": "transformer", "modulus": 113},
}
DEFAULT_STEPS = {"mlp": 400, "transformer": 1000}


def make_split(config: ModularConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs as (p², 3) rows (a, b, (a + b) mod p), split into (train, validation) by a fixed seed."""
    p = config.modulus
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    table = torch.stack([a.flatten(), b.flatten(), (a + b).flatten() % p], dim=1)
    order = torch.randperm(p * p, generator=generator_for(SPLIT_SEED, 0, f"modular-split-{p}"))
    return table[order[: config.n_train]], table[order[config.n_train:]]


class ModularMLP(nn.Module):
    """``forward(pairs)`` maps (B, 2) operands to (B, p) logits."""

    def __init__(self, config: ModularConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.modulus, config.d_embed)
        sizes = [2 * config.d_embed] + [config.width] * config.depth
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(config.width, config.modulus)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.embed(pairs).flatten(1)  # (B, 2 · d_embed)
        for layer in self.layers:
            x = F.gelu(layer(x))
        return self.head(x)


class ModularTransformer(nn.Module):
    """Nanda et al.'s one-layer transformer without LayerNorm; ``forward(pairs)`` gives (B, p) logits.

    The "=" token has id p, so the vocabulary has p + 1 entries; the readout sees only the
    residual stream at the "=" position.
    """

    def __init__(self, config: ModularConfig) -> None:
        super().__init__()
        d, self.n_head = config.d_embed, config.n_head
        self.equals = config.modulus
        self.embed = nn.Embedding(config.modulus + 1, d)
        self.pos_embed = nn.Embedding(3, d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, config.width)
        self.fc_proj = nn.Linear(config.width, d)
        self.head = nn.Linear(d, config.modulus, bias=False)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        batch = pairs.shape[0]
        equals = torch.full((batch, 1), self.equals, dtype=pairs.dtype, device=pairs.device)
        tokens = torch.cat([pairs, equals], dim=1)  # (B, 3)
        x = self.embed(tokens) + self.pos_embed.weight
        head_dim = x.shape[-1] // self.n_head

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, 3, d) -> (B, H, 3, d/H)
            return t.view(batch, 3, self.n_head, head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                                  is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, 3, -1))
        last = x[:, -1]
        last = last + self.fc_proj(F.relu(self.fc(last)))  # only the "=" position feeds the readout
        return self.head(last)


class ModularWorkload(ConfiguredWorkload):
    """(a + b) mod p with a fixed train fraction; ``evaluate`` returns the validation cross-entropy and accuracy."""

    name = "modular"
    scales = tuple(SCALES)
    steps_by_scale = DEFAULT_STEPS
    metric = "validation cross-entropy (nats)"
    config_class = ModularConfig
    presets = SCALES

    def build(self, scale: str = "mlp", seed: int = 0, **overrides: Any) -> Task:
        config = self.config(scale, **overrides)
        train, validation = make_split(config)
        model = seeded_model(seed, lambda: ModularMLP(config) if config.model == "mlp" else ModularTransformer(config))

        def train_batch(step: int) -> torch.Tensor:
            """(batch_size, 3) rows (a, b, answer)."""
            return train[epoch_batch_indices(seed, step, train.shape[0], config.batch_size, "modular")]

        def _logits(model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = rows.to(model.head.weight.device)
            return model(rows[:, :2]).float(), rows[:, 2]

        loss, sampled_loss = classification_losses(_logits)

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            total, correct = 0.0, 0
            for chunk in validation.split(4096):
                logits, answers = _logits(model, chunk)
                total += float(F.cross_entropy(logits, answers, reduction="sum"))
                correct += int((logits.argmax(-1) == answers).sum())
            return {"loss": total / validation.shape[0], "accuracy": correct / validation.shape[0]}

        info = {
            "scale": scale,
            "config": asdict(config),
            "n_train": train.shape[0],
            "n_validation": validation.shape[0],
            "split_seed": SPLIT_SEED,
            "chance_loss": math.log(config.modulus),
            "params_total": sum(p.numel() for p in model.parameters()),
        }
        return Task(model=model, train_batch=train_batch, loss=loss, evaluate=evaluate,
                    tokens_per_step=config.batch_size, sampled_loss=sampled_loss, info=info)


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(ModularWorkload())
