"""Drop-Muon: update only a random suffix of the layers at each step (Randomized Progressive Training).

Gruntkowska, Maziane, Qu, Richtárik, "Drop-Muon: Update Less, Converge Faster"
(arXiv:2510.02239). No official code was public; this follows the paper's algorithm.

Layers are indexed ``0 .. b-1`` from input to output. At each step a start index
``s ~ D`` is drawn and only layers ``s, ..., b-1`` are updated (with Muon: EMA momentum,
Newton–Schulz, the LMO step ``-lr * scale * O``); layers below ``s`` keep their weights
*and* their momentum (stale momentum is intended). ``D`` is uniform over ``{0..b-1}`` by
default (the paper's "uniform index sampling", used in its figures) or any probability
vector ``start_probs`` of length ``b``. Schedules that only an unofficial implementation
has (epoch-shift, gradient-norm adaptive) are not included. The paper's momentum
``beta_paper`` weighs the new gradient; ``momentum = 1 - beta_paper`` here (Muon's
convention), so the default 0.95 means ``beta_paper = 0.05``. We use the LMO form (polar
factor, no nuclear-norm factor), which is what makes it Muon-compatible.

Where the compute saving comes from: the trainer calls :meth:`DropMuon.prepare_step`
*before* the forward/backward pass; it draws ``s`` and sets ``requires_grad=False`` on
the frozen layers' parameters, so autograd skips their weight gradients (and, when no
trainable parameter lies below layer ``s``, the whole backward below it). ``step()``
restores ``requires_grad``. Without ``prepare_step`` the draw happens inside ``step()``
(correct, but no saving).

Which parameters form layer ``i``: a param group's ``layer`` key. ``create_optimizer``
builds one group per layer: hidden matrices are grouped by the prefix up to the first
numeric name component (``blocks.3.attn.q.weight`` -> ``blocks.3``; otherwise the owning
module), numbered in the model's parameter order (input to output for sequential
models). Vectors (norm gains, biases) under the same prefix belong to that layer.
Embeddings, the readout and the other vectors have ``layer=None``: updated every step
(AdamW rule). With bare parameters (``layer="auto"``, the default) each matrix-group
tensor is its own layer, in the order given; an ``int`` makes the whole group one layer.
A group added later with ``add_param_group`` joins the layers at once: its ``layer`` key as
above; without one it is updated every step (``layer=None``) where the layers are numbered,
and its matrices become new top layers where they are ``"auto"``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import torch

from optarena.optim._foreach import collect_grads
from optarena.optim.hooks import TrainingHooks
from optarena.optim.matrix_family import register_matrix_optimizer
from optarena.optim.muon import Muon
from optarena.optim.registry import FloatRange, Paper
from optarena.validation import check_int

__all__ = ["DropMuon", "layer_key"]


def layer_key(name: str) -> str:
    """``blocks.3.attn.q.weight`` -> ``blocks.3``; ``conv1.weight`` -> ``conv1`` (the owning module)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


class DropMuon(Muon, TrainingHooks):
    """Muon that updates a random suffix of the layers per step (see module docstring).

    Args:
        start_probs: ``None`` for the uniform start index, or ``b`` probabilities (one per
            layer, summing to 1) of starting the update at that layer.
        seed: seed of the optimizer's own generator (saved in ``state_dict``).
        Other arguments as :class:`~optarena.optim.Muon`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        start_probs: Sequence[float] | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        check_int("DropMuon", "seed", seed, 0)
        super().__init__(params, lr=lr, **kwargs)
        self.defaults["layer"] = "auto"
        self._layers = self._build_layers()
        if start_probs is not None:
            probs = torch.as_tensor(start_probs, dtype=torch.float64)
            if probs.shape != (len(self._layers),) or (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-6:
                raise ValueError(
                    f"DropMuon start_probs must be {len(self._layers)} non-negative numbers summing to 1 "
                    f"(one per layer), got start_probs={list(start_probs)!r}"
                )
            self._start_probs: torch.Tensor | None = probs
        else:
            self._start_probs = None
        self._generator = torch.Generator().manual_seed(seed)
        self._active: set[int] | None = None  # ids of the params updated at the pending step
        self._frozen: list[torch.Tensor] = []  # params whose requires_grad we switched off

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``; the new group joins the layers (see the module docstring)."""
        if "_layers" not in vars(self):  # the constructor's groups
            super().add_param_group(param_group)
            return
        if "layer" not in param_group and any(isinstance(g["layer"], int) for g in self.param_groups):
            param_group = {**param_group, "layer": None}
        super().add_param_group(param_group)
        try:
            layers = self._build_layers()
            if self._start_probs is not None and len(layers) != len(self._layers):
                raise ValueError(
                    f"DropMuon start_probs has one probability per layer ({len(self._layers)}); a group that "
                    f"adds layers needs new start_probs, or layer=None (updated every step), got "
                    f"layer={self.param_groups[-1]['layer']!r}"
                )
        except ValueError:
            self.param_groups.pop()
            raise
        self._layers = layers

    def _build_layers(self) -> list[list[torch.Tensor]]:
        explicit: dict[int, list[torch.Tensor]] = {}
        auto: list[list[torch.Tensor]] = []
        for group in self.param_groups:
            layer = group.setdefault("layer", "auto")
            if layer is None or (layer == "auto" and not group["matrix"]):
                continue
            if layer == "auto":
                auto.extend([p] for p in group["params"])
            elif isinstance(layer, int) and not isinstance(layer, bool):
                explicit.setdefault(layer, []).extend(group["params"])
            else:
                raise ValueError(f"DropMuon param-group layer must be an int, None or 'auto', got layer={layer!r}")
        if explicit and auto:
            raise ValueError("DropMuon: give every matrix group a 'layer' index, or none of them")
        layers = [explicit[k] for k in sorted(explicit)] if explicit else auto
        if not layers:
            raise ValueError("DropMuon needs at least one layer (a matrix group, or a group with a 'layer' index)")
        return layers

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def _draw(self) -> int:
        if self._start_probs is None:
            return int(torch.randint(len(self._layers), (1,), generator=self._generator))
        return int(torch.multinomial(self._start_probs, 1, generator=self._generator))

    def prepare_step(self) -> int:
        """Draw the start layer ``s`` for the next step and freeze layers below it; returns ``s``."""
        self._restore()
        start = self._draw()
        self._active = {id(p) for layer in self._layers[start:] for p in layer}
        for layer in self._layers[:start]:
            for p in layer:
                if p.requires_grad:
                    p.requires_grad_(False)
                    self._frozen.append(p)
        return start

    def _restore(self) -> None:
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []

    def _before_step(self) -> None:
        if self._active is None:
            start = self._draw()
            self._active = {id(p) for layer in self._layers[start:] for p in layer}

    def _after_step(self, loss: Any) -> None:
        self._restore()
        self._active = None

    def _is_active(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        return group["layer"] is None or (group["layer"] == "auto" and not group["matrix"]) or id(p) in self._active

    def _matrix_group(self, group: dict[str, Any]) -> None:
        self._run_on_active(group, super()._matrix_group)

    def _adamw_group(self, group: dict[str, Any], params: list[torch.Tensor] | None = None,
                     grads: list[torch.Tensor] | None = None) -> None:
        active = [p for p in collect_grads("DropMuon", group["params"])[0] if self._is_active(group, p)]
        super()._adamw_group(group, active)

    def _run_on_active(self, group: dict[str, Any], rule: Any) -> None:
        active = [p for p in group["params"] if self._is_active(group, p)]
        if len(active) == len(group["params"]):
            rule(group)
        elif active:
            rule({**group, "params": active})

    def _extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._generator.set_state(extra["generator"])


def _drop_muon_groups(partition: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """One Muon group per layer (see the module docstring), vectors of a layer with it, the rest always on."""
    order: dict[str, int] = {}
    for name, _ in partition.hidden:
        order.setdefault(layer_key(name), len(order))
    hidden: dict[int, list[tuple[str, Any]]] = {}
    for name, p in partition.hidden:
        hidden.setdefault(order[layer_key(name)], []).append((name, p))
    layer_vectors: dict[int, list[tuple[str, Any]]] = {}
    free_vectors = []
    for name, p in partition.vector:
        index = order.get(layer_key(name))
        (layer_vectors.setdefault(index, []) if index is not None else free_vectors).append((name, p))
    groups: list[dict[str, Any]] = []
    for index, named in sorted(hidden.items()):
        groups.append({"params": [p for _, p in named], "names": [n for n, _ in named], "matrix": True,
                       "layer": index})
        if index in layer_vectors:
            named_v = layer_vectors[index]
            groups.append({"params": [p for _, p in named_v], "names": [n for n, _ in named_v],
                           "matrix": False, "layer": index, "lr": args["adamw_lr"], "weight_decay": 0.0})
    tables = partition.embedding + partition.readout
    if tables:
        groups.append({"params": [p for _, p in tables], "names": [n for n, _ in tables], "matrix": False,
                       "layer": None, "lr": args["adamw_lr"], "weight_decay": args["adamw_weight_decay"]})
    if free_vectors:
        groups.append({"params": [p for _, p in free_vectors], "names": [n for n, _ in free_vectors],
                       "matrix": False, "layer": None, "lr": args["adamw_lr"], "weight_decay": 0.0})
    return groups


register_matrix_optimizer(
    "drop_muon", DropMuon,
    defaults=dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, scale="original", seed=0),
    search_space=dict(lr=FloatRange(2e-3, 2e-1), weight_decay=FloatRange(1e-3, 0.3)),
    paper=Paper("Drop-Muon: Update Less, Converge Faster", "2510.02239", 2025),
    description="Muon on a random suffix of the layers per step (uniform start index); frozen layers skip "
                "their weight gradients",
    build_groups=_drop_muon_groups,
)
