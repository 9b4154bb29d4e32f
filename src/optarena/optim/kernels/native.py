"""The C kernels of ``kernels.c``: build cache, loader, and Python callables generated from the C prototypes.

The source is compiled once per machine with the system C compiler (``$CC``, else ``cc``;
``-O3 -march=native -fopenmp``) into a cache directory (``$OPTARENA_CACHE_DIR``, else
``$XDG_CACHE_HOME/optarena``, else ``~/.cache/optarena``). The file name holds a hash of the
source, the flags, the compiler and the CPU, and a ``.sha256`` file beside the library holds
the digest of its bytes: a library is loaded only if it belongs to this user and its bytes
match that digest, else it is rebuilt. The kernels run on ``torch.get_num_threads()`` OpenMP
threads.

Each exported C function ``void optarena_<name>_f32(...)`` is declared once, in ``kernels.c``;
:func:`function` parses its prototype and returns a :class:`CFunction` whose ctypes argument
types and keyword names come from it. Without a compiler, or with ``OPTARENA_NATIVE=0``,
:func:`available` is False (a warning says why, once) and every caller keeps its compiled or
foreach path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["BLOCK", "CFunction", "SOURCE", "available", "function", "prototypes", "usable"]

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 16384  # kernels.c's elements per partial sum of a flat reduction
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_PROTOTYPE = re.compile(r"^void\s+optarena_(\w+)_f32\s*\(([^)]*)\)\s*\{", re.MULTILINE)
_CTYPES = {"float *": ctypes.c_void_p, "double *": ctypes.c_void_p, "int64_t": ctypes.c_int64,
           "double": ctypes.c_double, "int": ctypes.c_int}
_DTYPES = {"float *": torch.float32, "double *": torch.float64}

_library: ctypes.CDLL | None = None
_tried = False


@cache
def prototypes() -> dict[str, tuple[tuple[str, str], ...]]:
    """``{name: ((C type, parameter name), ...)}`` of every ``optarena_<name>_f32`` in ``kernels.c``."""
    out = {}
    for match in _PROTOTYPE.finditer(SOURCE.read_text()):
        params = []
        for decl in match.group(2).split(","):
            decl = " ".join(decl.replace("const ", "").split())
            kind, _, pname = decl.replace("*", "* ").rpartition(" ")
            if kind not in _CTYPES:
                raise RuntimeError(f"kernels.c: optarena_{match.group(1)}_f32 has a parameter of type {kind!r}; "
                                   f"the loader knows {sorted(_CTYPES)}")
            params.append((kind, pname))
        out[match.group(1)] = tuple(params)
    return out


def _cpu_fingerprint() -> str:
    """The CPU's model and flags: a library built with -march=native must not move to another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    if os.environ.get("OPTARENA_CACHE_DIR"):
        return Path(os.environ["OPTARENA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optarena"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(library: Path) -> bool:
    """Whether ``library`` is this user's and its bytes match the digest written when it was built."""
    digest = library.with_suffix(".sha256")
    try:
        if hasattr(os, "getuid") and library.stat().st_uid != os.getuid():
            return False
        return digest.read_text().strip() == _digest(library)
    except OSError:
        return False


def _build() -> Path:
    """Compile ``kernels.c`` unless a verified build is cached; returns the shared library's path."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler {compiler!r} on PATH (set CC)")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(_FLAGS).encode(), compiler.encode(),
                                     platform.machine().encode(), _cpu_fingerprint().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if _verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([compiler, *_FLAGS, str(SOURCE), "-o", str(built), "-lm"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[:500]}")
        digest = Path(tmp) / target.with_suffix(".sha256").name
        digest.write_text(_digest(built))
        os.replace(built, target)  # atomic: concurrent processes never load a half-written file
        os.replace(digest, target.with_suffix(".sha256"))
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
        for name, params in prototypes().items():
            symbol = getattr(library, f"optarena_{name}_f32")
            symbol.argtypes = [_CTYPES[kind] for kind, _ in params]
            symbol.restype = None
    except (OSError, RuntimeError, AttributeError) as exc:
        warnings.warn(f"fused=True: the C kernels of optarena.optim.kernels.native are unavailable ({exc}); "
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


class CFunction:
    """``optarena_<name>_f32`` of ``kernels.c``, called with its C parameter names.

    Positional arguments are the leading pointer parameters (tensors, or None for NULL);
    every other parameter is a keyword of the same name, except those derived from the first
    tensor: ``n`` (its element count), ``rows`` and ``cols`` (its ``(shape[0], -1)`` view) and
    ``threads`` (``torch.get_num_threads()``). Pointer keywords take tensors (scratch and outputs).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def params(self) -> tuple[tuple[str, str], ...]:
        try:
            return prototypes()[self.name]
        except KeyError:
            raise KeyError(f"kernels.c has no optarena_{self.name}_f32; it has "
                           f"{sorted(prototypes())}") from None

    def __call__(self, *tensors: torch.Tensor | None, **values: Any) -> None:
        params, first = self.params, tensors[0]
        rows = first.shape[0] if first.ndim >= 1 else 1
        derived = dict(n=first.numel(), rows=rows, cols=first.numel() // max(rows, 1),
                       threads=torch.get_num_threads())
        args: list[Any] = []
        for i, (kind, pname) in enumerate(params):
            if i < len(tensors):
                if not kind.endswith("*"):
                    raise TypeError(f"optarena_{self.name}_f32: {len(tensors)} positional arguments, but only its "
                                    f"leading pointer parameters are positional ({pname!r} is not one)")
                value = tensors[i]
            elif pname in values:
                value = values.pop(pname)
            elif pname in derived:
                value = derived[pname]
            else:
                raise TypeError(f"optarena_{self.name}_f32: missing argument {pname!r}")
            if kind.endswith("*"):
                if value is not None and (value.dtype != _DTYPES[kind] or value.device.type != "cpu"
                                          or not value.is_contiguous()):
                    raise TypeError(f"optarena_{self.name}_f32: {pname!r} must be a contiguous CPU "
                                    f"{_DTYPES[kind]} tensor, got {value.dtype} on {value.device}")
                args.append(None if value is None else value.data_ptr())
            else:
                args.append(float(value) if kind == "double" else int(value))
        if values:
            raise TypeError(f"optarena_{self.name}_f32: unknown arguments {sorted(values)}; "
                            f"its parameters are {[p for _, p in params]}")
        library = _load()
        if library is None:
            raise RuntimeError("the C kernels are unavailable (see the warning above, or OPTARENA_NATIVE=0); "
                               "check optarena.optim.kernels.native.usable() before calling them")
        getattr(library, f"optarena_{self.name}_f32")(*args)


def function(name: str) -> CFunction:
    """The C kernel ``optarena_<name>_f32``, bound lazily (nothing is built until it is called)."""
    return CFunction(name)
