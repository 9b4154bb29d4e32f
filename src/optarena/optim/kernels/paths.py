"""Running an elementwise update over a parameter group: single-tensor, foreach (cache-blocked) or fused.

An elementwise optimizer writes its update twice in plain torch, once per tensor and once
with ``torch._foreach_*`` ops, and its fused kernel once in :mod:`optarena.optim.kernels`;
:class:`ElementwiseUpdate` bundles the three and :meth:`ElementwiseUpdate.run` picks the
path from the group's ``foreach`` and ``fused`` options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from optarena.optim._foreach import group_by_device_dtype
from optarena.optim.kernels.compiled import FusedKernel

__all__ = ["CPU_BLOCK_NUMEL", "ElementwiseUpdate", "cache_blocks", "flat_slices"]

CPU_BLOCK_NUMEL = 65536  # 256 KB per fp32 tensor and thread: an elementwise step's working set stays in L2


def cache_blocks(
    tensor_lists: tuple[list[torch.Tensor], ...], block_numel: int | None = None
) -> list[tuple[list[torch.Tensor], ...]]:
    """Cut parallel lists of same-shaped CPU tensors into waves of flat views of about ``block_numel``
    (default ``CPU_BLOCK_NUMEL`` per torch thread: each op splits a wave evenly over the threads, so
    every thread's share stays in its L2 while the per-wave dispatch cost is paid once).

    A chain of foreach ops over whole lists streams every tensor through memory once per
    op; run wave by wave, the chain works on data that stays in cache. Only valid for purely
    elementwise chains (no per-tensor reductions). Non-CPU or non-contiguous inputs are
    returned as one wave, unchanged (foreach kernels on accelerators need no blocking).
    """
    if block_numel is None:
        block_numel = CPU_BLOCK_NUMEL * torch.get_num_threads()
    first = tensor_lists[0]
    if not first or first[0].device.type != "cpu" or not all(t.is_contiguous() for ts in tensor_lists for t in ts):
        return [tensor_lists]
    waves: list[tuple[list[torch.Tensor], ...]] = []
    current: tuple[list[torch.Tensor], ...] = tuple([] for _ in tensor_lists)
    filled = 0
    for tensors in zip(*tensor_lists):
        flats = [t.view(-1) for t in tensors]
        numel, start = flats[0].numel(), 0
        while start < numel:
            end = min(numel, start + block_numel - filled)
            for wave_list, flat in zip(current, flats):
                wave_list.append(flat[start:end])
            filled += end - start
            start = end
            if filled >= block_numel:
                waves.append(current)
                current, filled = tuple([] for _ in tensor_lists), 0
    if filled:
        waves.append(current)
    return waves


def flat_slices(*tensors: torch.Tensor, block_numel: int = CPU_BLOCK_NUMEL) -> list[tuple[torch.Tensor, ...]]:
    """Parallel flat slices of one parameter's tensors (whole tensors off CPU or if not contiguous)."""
    if not all(t.is_contiguous() for t in tensors):
        return [tensors]
    flats = [t.view(-1) for t in tensors]
    if tensors[0].device.type != "cpu":
        return [tuple(flats)]
    n = flats[0].numel()
    return [tuple(f[s:s + block_numel] for f in flats) for s in range(0, n, block_numel)]


@dataclass(frozen=True)
class ElementwiseUpdate:
    """One elementwise update in its three forms.

    ``single_tensor(*lists, **hyper)`` and ``foreach(*lists, **hyper)`` take parallel lists
    ``(params, grads, *state)`` of one device and dtype; ``fused`` is the per-tensor kernel
    (compiled, with a C loop for CPU float32 tensors), or None.
    """

    single_tensor: Callable[..., None]
    foreach: Callable[..., None]
    fused: FusedKernel | None = None

    def run(self, group: dict[str, Any], tensor_lists: tuple[list[torch.Tensor], ...], hyper: dict[str, Any],
            fused_hyper: dict[str, Any] | None = None, *, blocked: bool = True) -> None:
        """Update the tensors of one param group through the path its options choose.

        With ``group["fused"]`` and ``fused_hyper`` (the kernel's keywords, floats as Python
        floats), the kernel takes every tensor it can and hands the rest back; those and all
        others take ``foreach`` (in cache-sized waves unless ``blocked`` is False, for updates
        that are not purely elementwise) or, with ``group["foreach"]`` False, ``single_tensor``.
        """
        kernel = self.fused if group.get("fused") and fused_hyper is not None else None
        for chunk in group_by_device_dtype(*tensor_lists):
            if kernel is not None:
                chunk = kernel.apply(chunk, **fused_hyper)
                if not chunk[0]:
                    continue
            if not group["foreach"]:
                self.single_tensor(*chunk, **hyper)
                continue
            for wave in cache_blocks(chunk) if blocked else [chunk]:
                self.foreach(*wave, **hyper)
