"""The performance layer behind the optimizers' ``foreach`` and ``fused`` options.

The optimizer modules state each method's update in plain torch (per tensor and with
``torch._foreach_*`` ops); this package holds everything that makes those updates fast
without changing their numbers:

- :mod:`~optarena.optim.kernels.paths`: :class:`ElementwiseUpdate`, which runs an elementwise
  update over a param group through its single-tensor, foreach (cache-blocked) or fused path;
- :mod:`~optarena.optim.kernels.compiled`: :class:`FusedKernel`, a per-tensor update compiled
  once with ``torch.compile`` (and routed to a C loop where the tensors allow);
- :mod:`~optarena.optim.kernels.native`: ``kernels.c``, its build cache and loader, and the
  C functions, declared once by their prototypes in ``kernels.c``;
- one module per method family with its fused kernels: :mod:`~optarena.optim.kernels.elementwise`
  (Lion, Adan, Sophia, CLASSP, Schedule-Free AdamW), :mod:`~optarena.optim.kernels.projected`
  (AdamP, SGDP), :mod:`~optarena.optim.kernels.memory` (AM-SGD, AM-AdamW) and
  :mod:`~optarena.optim.kernels.rms` (SCALE).

Optimizer modules import from this package, never the loader itself.
"""

from optarena.optim.kernels import elementwise
from optarena.optim.kernels.compiled import FusedKernel, fusable, fused_kernel
from optarena.optim.kernels.paths import ElementwiseUpdate, cache_blocks, flat_slices

__all__ = ["ElementwiseUpdate", "FusedKernel", "cache_blocks", "elementwise", "flat_slices", "fusable", "fused_kernel"]
