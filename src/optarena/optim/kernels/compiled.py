"""Fused update kernels: one compiled pass over each tensor instead of a chain of foreach ops.

A foreach step streams every state tensor through memory once per op (a Lion step is five
ops, AdamW's eight). A :class:`FusedKernel` wraps a per-tensor update written in plain torch
ops and compiles it with ``torch.compile`` into one loop that reads and writes each element
once. It is what an optimizer's ``fused=True`` runs.

Two choices keep the compiled kernel reusable for the whole run:

- tensors are passed as flat (or ``(rows, cols)``) views with dynamic sizes, so one
  compilation serves every parameter shape;
- float hyperparameters (learning rate, betas, bias corrections) are passed as 0-d
  float64 tensors, not Python floats. Dynamo specialises on Python floats, so a learning
  rate schedule would otherwise recompile at every step.

Each call pays Python and guard overhead, so tensors with fewer than ``FUSED_MIN_NUMEL``
elements (biases, norm gains), and non-contiguous ones, are left to the caller's foreach
path (:func:`fusable`; :meth:`FusedKernel.apply` hands them back). A kernel built with
``native=`` (a C function of :mod:`optarena.optim.kernels.native` with the same arguments)
runs that hand-written loop instead wherever the tensors allow it (CPU, float32, contiguous:
:func:`optarena.optim.kernels.native.usable`), at any size, since a C call is cheap; it
compiles only for the rest.

If ``torch.compile`` is unavailable or fails (no C++ compiler, an unsupported platform),
the kernel warns once and from then on hands every tensor back, so a step never half-fails.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch

from optarena.optim.kernels import native as c_kernels

__all__ = ["FUSED_MIN_NUMEL", "FusedKernel", "fusable", "fused_kernel"]

FUSED_MIN_NUMEL = 32768  # below this a compiled call's fixed overhead outweighs the saved memory passes


def fusable(*tensors: torch.Tensor) -> bool:
    """Whether a kernel should take these tensors: large enough and all contiguous."""
    return tensors[0].numel() >= FUSED_MIN_NUMEL and all(t.is_contiguous() for t in tensors)


class FusedKernel:
    """A per-tensor update ``fn(*tensors, **hyper)`` compiled once, applied tensor by tensor.

    ``fn`` modifies its tensor arguments in place and may return tensors (reductions);
    float keyword arguments arrive as 0-d float64 tensors, other keywords (bools, ints used
    as switches) as Python values, on which the compiled code specialises. ``native``, if
    given, is called instead with the same arguments (floats as floats) on the tensors it can take.
    """

    def __init__(self, fn: Callable[..., Any], native: Callable[..., Any] | None = None) -> None:
        self.fn = fn
        self.native = native
        self.name = fn.__name__
        self._compiled: Callable[..., Any] | None = None
        self.disabled = False
        self._last_key: tuple[Any, ...] | None = None
        self._last_scalars: dict[str, Any] = {}

    def compiled(self) -> Callable[..., Any]:
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        return self._compiled

    def _disable(self, exc: BaseException) -> None:
        self.disabled = True
        warnings.warn(
            f"fused=True: compiling {self.name} with torch.compile failed ({type(exc).__name__}: "
            f"{str(exc)[:200]}); falling back to the foreach path for the rest of this process",
            RuntimeWarning, stacklevel=3,
        )

    def scalars(self, device: torch.device, hyper: dict[str, Any]) -> dict[str, Any]:
        """Floats become 0-d float64 tensors on ``device`` (one transfer); everything else passes through.

        The last conversion is reused while the floats stay the same (every tensor of a step).
        """
        floats = tuple((k, v) for k, v in hyper.items() if isinstance(v, float))
        key = (device, floats)
        if key != self._last_key:
            converted: dict[str, Any] = {}
            if floats:
                values = torch.tensor([v for _, v in floats], dtype=torch.float64, device=device)
                converted = dict(zip((k for k, _ in floats), values.unbind()))
            self._last_key, self._last_scalars = key, converted
        return {**{k: v for k, v in hyper.items() if not isinstance(v, float)}, **self._last_scalars}

    def call(self, *tensors: torch.Tensor, **hyper: Any) -> tuple[bool, Any]:
        """Run on one set of tensors (already viewed as the kernel expects).

        Returns ``(True, output)``, or ``(False, None)`` when the kernel is off (compilation failed).
        """
        if self.native is not None and c_kernels.usable(*tensors):
            return True, self.native(*tensors, **hyper)
        if self.disabled:
            return False, None
        try:
            return True, self.compiled()(*tensors, **self.scalars(tensors[0].device, hyper))
        except Exception as exc:  # compilation errors surface at the first call of a new specialisation
            self._disable(exc)
            return False, None

    def apply(self, tensor_lists: Sequence[list[torch.Tensor]], **hyper: Any) -> tuple[list[torch.Tensor], ...]:
        """Update every large contiguous tensor of the parallel lists with the kernel, on flat views.

        Returns the parallel lists of the tensors it did not update (non-contiguous, small
        ones the C loop cannot take, or all of the rest after a compilation failure) for the
        caller's foreach path.
        """
        rest: tuple[list[torch.Tensor], ...] = tuple([] for _ in tensor_lists)
        for tensors in zip(*tensor_lists):
            # the C loop takes tensors of any size (a call is cheap), the compiled one large tensors
            takes = (self.native is not None and c_kernels.usable(*tensors)) or fusable(*tensors)
            if not takes or not self.call(*(t.view(-1) for t in tensors), **hyper)[0]:
                for out, t in zip(rest, tensors):
                    out.append(t)
        return rest


def fused_kernel(fn: Callable[..., Any] | None = None, *, native: Callable[..., Any] | None = None) -> Any:
    """Decorator: make ``fn`` a :class:`FusedKernel`; ``@fused_kernel(native=...)`` adds its C loop."""
    if fn is None:
        return lambda f: FusedKernel(f, native)
    return FusedKernel(fn, native)
