"""Hand-written C kernels (``kernels.c``) for the CPU steps that need a reduction before the update.

``fused=True`` compiles most updates with ``torch.compile`` (:mod:`optarena.optim._fused`),
which makes an elementwise step one loop. A step that must reduce before it updates (a
row norm, a cosine, a model-wide inner product) compiles to two loops and reads its data
twice. For those steps on CPU float32 tensors, ``fused=True`` calls the kernels of
``kernels.c`` instead: AdamP and SGDP (update fused with the scale-invariance test),
SCALE (row and column RMS), AM-SGD and AM-AdamW (inner products, then the update).
``kernels.c`` also holds one-pass kernels for the purely elementwise steps (Lion, Adan,
Sophia, CLASSP, Schedule-Free AdamW): their compiled loops ran 1.3-1.6x slower on CPU.
A :class:`~optarena.optim._fused.FusedKernel` built with ``native=`` prefers them wherever
:func:`usable` says so.

The source is compiled once per machine with the system C compiler (``$CC``, else ``cc``;
``-O3 -march=native -fopenmp``, well under a second) into a cache directory
(``$OPTARENA_CACHE_DIR``, else ``~/.cache/optarena``) and loaded with :mod:`ctypes`. The
kernels run on ``torch.get_num_threads()`` OpenMP threads. Without a compiler, or with
``OPTARENA_NATIVE=0``, :func:`available` is False and every caller keeps its compiled or
foreach path (a warning says why, once).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = [
    "adamp_step", "adan_step", "am_adamw_sums", "am_adamw_update", "am_sgd_sums", "am_sgd_update", "available",
    "classp_step", "col_rms_step", "lion_step", "row_rms_step", "sf_adamw_step", "sgdp_step", "sophia_step",
    "usable",
]

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 16384  # kernels.c's elements per partial sum
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]

_P, _I64, _D, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "optarena_adamp_f32": [_P, _P, _P, _P, _I64, _I64, _D, _D, _D, _D, _D, _D, _INT, _D, _P, _P, _INT],
    "optarena_sgdp_f32": [_P, _P, _P, _I64, _I64, _D, _D, _D, _D, _INT, _D, _P, _P, _INT],
    "optarena_row_rms_f32": [_P, _P, _P, _I64, _I64, _D, _D, _D, _INT],
    "optarena_col_rms_f32": [_P, _P, _I64, _I64, _D, _D, _P, _P, _INT],
    "optarena_am_sgd_sums_f32": [_P, _P, _P, _I64, _D, _P, _P, _INT],
    "optarena_am_sgd_update_f32": [_P, _P, _P, _I64, _D, _D, _D, _INT],
    "optarena_am_adamw_sums_f32": [_P, _P, _P, _P, _I64, _D, _D, _D, _D, _D, _D, _INT, _P, _P, _INT],
    "optarena_am_adamw_update_f32": [_P, _P, _P, _P, _I64, _D, _D, _D, _D, _D, _D, _D, _INT],
    "optarena_lion_f32": [_P, _P, _P, _I64, _D, _D, _D, _D, _INT],
    "optarena_adan_f32": [_P, _P, _P, _P, _P, _P, _I64, _D, _D, _D, _D, _D, _D, _D, _INT, _INT],
    "optarena_sophia_f32": [_P, _P, _P, _P, _I64, _D, _D, _D, _D, _D, _INT],
    "optarena_classp_f32": [_P, _P, _P, _I64, _D, _D, _D, _D, _INT, _INT, _INT, _INT, _INT],
    "optarena_sf_adamw_f32": [_P, _P, _P, _P, _I64, _D, _D, _D, _D, _D, _D, _D, _INT],
}

_library: ctypes.CDLL | None = None
_tried = False


def _cpu_fingerprint() -> str:
    """The CPU's model and flags: a library built with -march=native must not move to another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    return Path(os.environ.get("OPTARENA_CACHE_DIR") or Path.home() / ".cache" / "optarena")


def _build() -> Path:
    """Compile ``kernels.c`` unless a matching build is cached; returns the shared library's path."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (set CC)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_fingerprint().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *_FLAGS, str(SOURCE), "-o", str(built), "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[:500]}")
        os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    return target


def _load() -> ctypes.CDLL | None:
    global _library, _tried
    if _tried:
        return _library
    _tried = True
    if os.environ.get("OPTARENA_NATIVE", "1") == "0":
        return None
    try:
        library = ctypes.CDLL(str(_build()))
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = None
    except (OSError, RuntimeError, AttributeError) as exc:
        warnings.warn(f"fused=True: the C kernels of optarena.optim._native are unavailable ({exc}); "
                      "the optimizers use their compiled or foreach paths",
                      RuntimeWarning, stacklevel=3)
        return None
    _library = library
    return library


def available() -> bool:
    """Whether the C kernels are built and loaded (compiles them at the first call)."""
    return _load() is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can go to a C kernel: float32, CPU, contiguous, one shape, kernels available."""
    first = tensors[0]
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                and t.shape == first.shape for t in tensors)
            and available())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rows_cols(t: torch.Tensor) -> tuple[int, int]:
    rows = t.shape[0] if t.ndim >= 1 else 1
    return rows, t.numel() // max(rows, 1)


def _threads() -> int:
    return torch.get_num_threads()


def adamp_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, *, beta1: float, beta2: float,
               bc2_sqrt: float, eps: float, step_size: float, decay: float, nesterov: bool,
               test_eps: float) -> torch.Tensor:
    """AdamP's unprojected step in one pass. Returns the scale-invariance test's float64 cosines over θ
    before the update, [largest row |cos(g, θ)|, whole-tensor |cos(g, θ)|], rows of the ``(shape[0], -1)``
    view, ``test_eps`` the floor of the norms."""
    rows, cols = _rows_cols(p)
    sums, cosines = torch.empty(rows, 3, dtype=torch.float64), torch.empty(2, dtype=torch.float64)
    _load().optarena_adamp_f32(_ptr(p), _ptr(g), _ptr(m), _ptr(v), rows, cols, beta1, beta2, bc2_sqrt, eps,
                               step_size, decay, int(nesterov), test_eps, _ptr(sums), _ptr(cosines), _threads())
    return cosines


def sgdp_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, *, mu: float, damp: float, lr: float,
              decay: float, nesterov: bool, test_eps: float) -> torch.Tensor:
    """SGDP's unprojected step in one pass; returns the cosines of :func:`adamp_step`."""
    rows, cols = _rows_cols(p)
    sums, cosines = torch.empty(rows, 3, dtype=torch.float64), torch.empty(2, dtype=torch.float64)
    _load().optarena_sgdp_f32(_ptr(p), _ptr(g), _ptr(buf), rows, cols, mu, damp, lr, decay, int(nesterov),
                              test_eps, _ptr(sums), _ptr(cosines), _threads())
    return cosines


def row_rms_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, weight: float, lr: float,
                 decay: float) -> None:
    """θ <- θ (1 - decay) - lr d / max(rms_row(d), 1e-8) on the ``(shape[0], -1)`` view, d = g, or with
    ``buf`` the momentum ``buf <- lerp(buf, g, weight)`` updated in the same pass."""
    rows, cols = _rows_cols(p)
    _load().optarena_row_rms_f32(_ptr(p), _ptr(g), _ptr(buf), rows, cols, weight, lr, decay, _threads())


def col_rms_step(p: torch.Tensor, g: torch.Tensor, *, lr: float, decay: float) -> None:
    """θ <- θ (1 - decay) - lr g / max(rms_col(g), 1e-8), RMS over ``dim=0`` of the ``(shape[0], -1)`` view."""
    rows, cols = _rows_cols(p)
    colsq, colf = torch.empty(cols, dtype=torch.float64), torch.empty(cols, dtype=torch.float32)  # scratch
    _load().optarena_col_rms_f32(_ptr(p), _ptr(g), rows, cols, lr, decay, _ptr(colsq), _ptr(colf), _threads())


def _partials(n: int, k: int) -> torch.Tensor:
    """Scratch for k partial sums per block of a flat reduction (callers hold it until the kernel returns)."""
    return torch.empty(-(-n // BLOCK) * k, dtype=torch.float64)


def am_sgd_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: float) -> torch.Tensor:
    """[Σ h², Σ (h - d)²] with h = g + wd θ, float64."""
    out, partials = torch.empty(2, dtype=torch.float64), _partials(p.numel(), 2)
    _load().optarena_am_sgd_sums_f32(_ptr(p), _ptr(g), _ptr(d), p.numel(), weight_decay, _ptr(partials),
                                     _ptr(out), _threads())
    return out


def am_sgd_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, *, weight_decay: float, weight: float,
                  lr: float) -> None:
    """d <- d + weight (h - d);  θ <- θ - lr d."""
    _load().optarena_am_sgd_update_f32(_ptr(p), _ptr(g), _ptr(d), p.numel(), weight_decay, weight, lr, _threads())


def am_adamw_sums(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, beta2: float,
                  bc2_sqrt: float, eps: float, correction: float, lam: float, weight_decay: float,
                  want_sums: bool) -> torch.Tensor | None:
    """AM-AdamW's pass 1: the second moment, then (``want_sums``) β's three inner products, float64."""
    out, partials = torch.empty(3, dtype=torch.float64), _partials(p.numel(), 3)
    _load().optarena_am_adamw_sums_f32(_ptr(p), _ptr(g), _ptr(d), _ptr(v), p.numel(), beta2, bc2_sqrt, eps,
                                       correction, lam, weight_decay, int(want_sums), _ptr(partials),
                                       _ptr(out), _threads())
    return out if want_sums else None


def am_adamw_update(p: torch.Tensor, g: torch.Tensor, d: torch.Tensor, v: torch.Tensor, *, keep: float,
                    bc2_sqrt: float, eps: float, correction: float, lam: float, lr: float,
                    weight_decay: float) -> None:
    """AM-AdamW's pass 2: d <- d - keep u / (1 + λP);  θ <- θ (1 - lr wd) - lr d / P."""
    _load().optarena_am_adamw_update_f32(_ptr(p), _ptr(g), _ptr(d), _ptr(v), p.numel(), keep, bc2_sqrt, eps,
                                         correction, lam, lr, weight_decay, _threads())


# Purely elementwise steps. Each takes the tensors (flat views of one shape) and keywords of the
# compiled kernel it stands in for (``_<method>_fused`` in the optimizer's module), Python floats.


def lion_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, lr: float, beta1: float, beta2: float,
              weight_decay: float) -> None:
    """Lion's sign step and momentum update (``optarena.optim.lion._lion_fused``)."""
    _load().optarena_lion_f32(_ptr(p), _ptr(g), _ptr(m), p.numel(), lr, beta1, beta2, weight_decay, _threads())


def adan_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, n: torch.Tensor,
              prev: torch.Tensor, *, b1: float, b2: float, b3: float, size_m: float, size_v: float,
              eps_scaled: float, decay: float, no_prox: bool) -> None:
    """Adan's step (``optarena.optim.adan._adan_fused``)."""
    _load().optarena_adan_f32(_ptr(p), _ptr(g), _ptr(m), _ptr(v), _ptr(n), _ptr(prev), p.numel(), b1, b2, b3,
                              size_m, size_v, eps_scaled, decay, int(no_prox), _threads())


def sophia_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, h: torch.Tensor, *, lr: float, beta1: float,
                rho: float, weight_decay: float, eps: float) -> None:
    """Sophia's clipped step (``optarena.optim.sophia._sophia_fused``)."""
    _load().optarena_sophia_f32(_ptr(p), _ptr(g), _ptr(m), _ptr(h), p.numel(), lr, beta1, rho, weight_decay, eps,
                                _threads())


def classp_step(p: torch.Tensor, g: torch.Tensor, acc: torch.Tensor, *, lr: float, threshold: float, eps: float,
                power: float, power_kind: int, apply_scaling: bool, include_current: bool,
                thresholded: bool) -> None:
    """CLASSP's step (``optarena.optim.classp._classp_fused``)."""
    _load().optarena_classp_f32(_ptr(p), _ptr(g), _ptr(acc), p.numel(), lr, threshold, eps, power, power_kind,
                                int(apply_scaling), int(include_current), int(thresholded), _threads())


def sf_adamw_step(y: torch.Tensor, g: torch.Tensor, z: torch.Tensor, v: torch.Tensor, *, lr: float, ckp: float,
                  beta1: float, beta2: float, bc2_sqrt: float, eps: float, weight_decay: float) -> None:
    """Schedule-Free AdamW's step at y (``optarena.optim.schedule_free._sf_adamw_fused``)."""
    _load().optarena_sf_adamw_f32(_ptr(y), _ptr(g), _ptr(z), _ptr(v), y.numel(), lr, ckp, beta1, beta2, bc2_sqrt,
                                  eps, weight_decay, _threads())
