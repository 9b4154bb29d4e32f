"""``lm``: a small decoder-only transformer over the bytes of sixteen Shakespeare plays.

The model is written to be read in one sitting (in the spirit of Karpathy's nanoGPT):
token and learned position embeddings, ``n_layer`` pre-norm blocks of causal
self-attention and an MLP, a final norm and an output head. The vocabulary is the 256
byte values, so there is no tokenizer and nothing to download. Every knob that the
scaling and stability studies need lives in :class:`LMConfig`:

- ``norm``: ``"rmsnorm"`` or ``"layernorm"``; ``mlp``: ``"gelu"`` or ``"swiglu"``
  (Shazeer, "GLU Variants Improve Transformer", arXiv:2002.05202).
- ``qk_layernorm`` and ``z_loss``: the two mitigations studied in Wortsman et al.,
  "Small-scale proxies for large-scale Transformer training instabilities"
  (arXiv:2309.14322). ``z_loss`` adds ``z_loss * log(Z)**2`` (Z the softmax normaliser
  of the output logits, averaged over tokens) to the *training* loss only.
- ``attn_scale`` (``"sqrt"`` = 1/sqrt(d_head); ``"mup"`` = 1/d_head) and ``output_mult``
  (a multiplier on the logits): the attention and readout conventions of muP (Yang et al.,
  "Tensor Programs V", arXiv:2203.03466).
- ``track_stats``: each forward stores in ``model.stats`` the largest attention logit over
  all layers, heads and (causal) positions, ``"max_attn_logit"``, and the root mean square
  of the output logits, ``"logit_rms"`` — the instability proxies of Wortsman et al.; the
  task's ``forward_stats`` hands them to the trainer after each training forward.

Scales ``tiny`` / ``small`` / ``base`` differ only in width (``d_model`` 64 / 128 / 256)
with depth and ``head_dim`` fixed, so width studies change one thing at a time;
``build(scale, seed, **overrides)`` accepts any :class:`LMConfig` field; ``build_mup`` builds
the muP model of a scale relative to a base width (:mod:`optarena.arena.workloads.lm_mup`).

Choices of ours, not taken from a paper: queries, keys and values are three separate
``nn.Linear`` layers (so matrix optimizers such as Muon orthogonalise each one); no
biases in linear layers; ``qk_layernorm`` normalises each head's queries and keys with
the same kind of norm as ``norm`` (Wortsman et al. use LayerNorm); the SwiGLU hidden
width is 2/3 of the GELU one (rounded to a multiple of 8) to keep parameter counts close.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from optarena.arena.workloads._corpus import load_corpus
from optarena.arena.workloads._random import generator_for
from optarena.arena.workloads.base import ConfiguredWorkload, Task, classification_losses, seeded_model

if TYPE_CHECKING:
    from optarena.scaling.mup_plan import MupPlan

__all__ = ["LMConfig", "LMWorkload", "ByteTransformer", "SCALES", "VOCAB_SIZE"]

VOCAB_SIZE = 256  # one token per byte value


@dataclass(frozen=True)
class LMConfig:
    """Everything that defines the ``lm`` model and its batches."""

    d_model: int = 64
    n_layer: int = 2
    head_dim: int = 16  # n_head = d_model // head_dim
    mlp_ratio: float = 4.0
    seq_len: int = 64
    batch_size: int = 32
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    mlp: str = "gelu"  # "gelu" | "swiglu"
    qk_layernorm: bool = False
    z_loss: float = 0.0
    tie_embeddings: bool = False
    attn_scale: str = "sqrt"  # "sqrt": 1/sqrt(head_dim); "mup": 1/head_dim
    output_mult: float = 1.0
    init_std: float = 0.02
    track_stats: bool = False
    eval_windows: int = 256  # validation windows of seq_len + 1 bytes, the same for every run

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layer", "head_dim", "seq_len", "batch_size", "eval_windows")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LMConfig.{name} must be a positive integer, got {name}={value!r}")
        if self.d_model % self.head_dim != 0:
            raise ValueError(
                f"LMConfig.d_model must be a multiple of head_dim, got d_model={self.d_model}, head_dim={self.head_dim}"
            )
        choices = {"norm": ("rmsnorm", "layernorm"), "mlp": ("gelu", "swiglu"), "attn_scale": ("sqrt", "mup")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"LMConfig.{name} must be one of {valid}, got {name}={getattr(self, name)!r}")
        for name in ("mlp_ratio", "output_mult", "init_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"LMConfig.{name} must be a finite number > 0, got {name}={value!r}")
        if not (isinstance(self.z_loss, (int, float)) and math.isfinite(self.z_loss) and self.z_loss >= 0):
            raise ValueError(f"LMConfig.z_loss must be a finite number >= 0, got z_loss={self.z_loss!r}")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_dim

    @property
    def mlp_hidden(self) -> int:
        width = self.mlp_ratio * self.d_model * (2.0 / 3.0 if self.mlp == "swiglu" else 1.0)
        return max(8, int(round(width / 8)) * 8)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


# Width is the only difference between scales (depth and head_dim fixed, for clean width studies).
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64},
    "small": {"d_model": 128},
    "base": {"d_model": 256},
}
DEFAULT_STEPS = {"tiny": 250, "small": 250, "base": 250}


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_norm = _norm(config.norm, config.head_dim) if config.qk_layernorm else nn.Identity()
        self.k_norm = _norm(config.norm, config.head_dim) if config.qk_layernorm else nn.Identity()
        self.scale = 1.0 / (config.head_dim if config.attn_scale == "mup" else math.sqrt(config.head_dim))
        self.track_stats = config.track_stats
        self.max_logit: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, D)
            return t.view(batch, time, self.n_head, self.head_dim).transpose(1, 2)

        q, k, v = self.q_norm(heads(self.q(x))), self.k_norm(heads(self.k(x))), heads(self.v(x))
        if self.track_stats:
            with torch.no_grad():
                logits = (q @ k.transpose(-2, -1)) * self.scale
                causal = torch.ones(time, time, dtype=torch.bool, device=x.device).tril()
                self.max_logit = float(logits.masked_fill(~causal, float("-inf")).max())
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(batch, time, width))


class MLP(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        hidden = config.mlp_hidden
        self.swiglu = config.mlp == "swiglu"
        # For SwiGLU, fc computes the gate and the value in one matrix of twice the height.
        self.fc = nn.Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=False)
        self.proj = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.norm1 = _norm(config.norm, config.d_model)
        self.attn = CausalSelfAttention(config)
        self.norm2 = _norm(config.norm, config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ByteTransformer(nn.Module):
    """Decoder-only transformer on bytes: ``forward(idx)`` maps (B, T) byte ids to (B, T, 256) logits."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.wpe = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config.norm, config.d_model)
        self.lm_head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.stats: dict[str, float] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # GPT-2: the projections that write into the residual stream get std / sqrt(2 * n_layer).
                scale = 1.0 / math.sqrt(2 * self.config.n_layer) if name.endswith(".proj") else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
        # (With tied embeddings the loop initialises the shared weight twice, ending as lm_head's draw.)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        time = idx.shape[1]
        if time > self.config.seq_len:
            raise ValueError(f"sequence of length {time} exceeds the model's seq_len={self.config.seq_len}")
        positions = torch.arange(time, device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm_f(x)) * self.config.output_mult
        if self.config.track_stats:
            with torch.no_grad():
                self.stats = {
                    "max_attn_logit": max(block.attn.max_logit for block in self.blocks),
                    "logit_rms": float(logits.float().pow(2).mean().sqrt()),
                }
        return logits


def _split(batch: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets of a (B, T + 1) window batch, on the model's device."""
    batch = batch.to(next(model.parameters()).device, torch.long)
    return batch[:, :-1], batch[:, 1:]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def count_parameters(model: ByteTransformer) -> dict[str, int]:
    """Total parameters (tied weights once) and non-embedding ones.

    Non-embedding excludes the token and position embeddings and the output head, i.e. it
    counts the transformer blocks and the final norm (the ``N`` of compute scaling laws).
    """
    total = sum(p.numel() for p in model.parameters())
    excluded = {id(model.wte.weight), id(model.wpe.weight), id(model.lm_head.weight)}
    embedding = sum(p.numel() for p in model.parameters() if id(p) in excluded)
    return {"params_total": total, "params_non_embedding": total - embedding}


class LMWorkload(ConfiguredWorkload):
    """Byte-level language modelling; ``evaluate`` returns validation cross-entropy in nats/byte."""

    name = "lm"
    scales = tuple(SCALES)
    steps_by_scale = DEFAULT_STEPS
    metric = "validation cross-entropy (nats/byte)"
    config_class = LMConfig
    presets = SCALES

    def build_mup(self, scale: str = "tiny", seed: int = 0, base_width: int | None = None,
                  **overrides: Any) -> tuple[Task, MupPlan]:
        """The task of ``scale`` with a muP model of base width ``base_width`` (default: the first scale's)."""
        from optarena.arena.workloads.lm_mup import mup_lm_config, mup_lm_init_

        width = self.config(scale, **overrides).d_model
        base_width = base_width or self.config(self.scales[0]).d_model
        task = self.build(scale, seed, **{**overrides, **mup_lm_config(base_width, width)})
        return task, mup_lm_init_(task.model, base_width)

    def build(self, scale: str = "tiny", seed: int = 0, **overrides: Any) -> Task:
        config = self.config(scale, **overrides)
        corpus = load_corpus()
        window = config.seq_len + 1
        if corpus.validation.numel() < window:
            raise ValueError(f"seq_len={config.seq_len} is longer than the validation split")
        model = seeded_model(seed, lambda: ByteTransformer(config))

        offsets = torch.arange(window)
        train = corpus.train

        def train_batch(step: int) -> torch.Tensor:
            """(batch_size, seq_len + 1) random windows of the training split, a function of (seed, step)."""
            starts = torch.randint(0, train.numel() - window + 1, (config.batch_size, 1),
                                   generator=generator_for(seed, step, "lm"))
            return train[starts + offsets].long()

        # Evenly spaced windows over the whole validation split: the same for every run and seed.
        last_start = corpus.validation.numel() - window
        starts = torch.linspace(0, last_start, config.eval_windows, dtype=torch.float64).round().long()
        validation = corpus.validation[starts[:, None] + offsets].long()

        def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            inputs, targets = _split(batch, model)
            logits = model(inputs)
            value = cross_entropy(logits, targets)
            if config.z_loss > 0:
                value = value + config.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
            return value

        def forward(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inputs, targets = _split(batch, model)
            return model(inputs).float().flatten(0, 1), targets.flatten()

        _, sampled_loss = classification_losses(forward)

        @torch.no_grad()
        def evaluate(model: nn.Module) -> dict[str, float]:
            was_training, saved_stats = model.training, dict(getattr(model, "stats", {}))
            model.eval()
            total, count = 0.0, 0
            try:
                for chunk in validation.split(config.batch_size):
                    inputs, targets = _split(chunk, model)
                    total += float(cross_entropy(model(inputs), targets, reduction="sum"))
                    count += targets.numel()
            finally:
                model.train(was_training)
                if hasattr(model, "stats"):
                    model.stats = saved_stats  # keep the training forward's stability stats
            return {"loss": total / count}

        def forward_stats(model: nn.Module) -> dict[str, float]:
            return dict(model.stats)

        info = {
            "scale": scale,
            "config": asdict(config),
            "data": corpus.name,
            "data_sha256": corpus.sha256,
            "data_bytes": corpus.n_bytes,
            "train_bytes": corpus.train.numel(),
            "validation_bytes": corpus.validation.numel(),
            "validation_tokens": validation.shape[0] * config.seq_len,
            **count_parameters(model),
        }
        return Task(
            model=model,
            train_batch=train_batch,
            loss=loss,
            evaluate=evaluate,
            tokens_per_step=config.tokens_per_step,
            sampled_loss=sampled_loss,
            forward_stats=forward_stats if config.track_stats else None,
            info=info,
        )


from optarena.arena.workloads import register_workload  # noqa: E402

register_workload(LMWorkload())
