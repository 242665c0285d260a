"""C kernels for x86 CPUs with AVX2 and FMA, built at first use and loaded with ctypes.

A kernel's C source sits beside its Python module (`cpu_int4.c`, `cpu_int8.c`,
`cpu_decode_attention.c`, `cpu_token_ops.c`), with the helpers they share (bfloat16
conversions, the rows' int16 quantization) in `cpu_native.h`.
`load(name)` compiles it with the system's C compiler (`$CC`, else `cc` or `gcc`;
`-O3 -mavx2 -mfma -fopenmp`) into a cache folder (`$MAX_KERNEL_CACHE`, else
`~/.cache/max/kernels`), keyed by the source's hash, and loads it. Its OpenMP loops run on
torch's own OpenMP runtime (libgomp.so.1, loaded with torch, is the library they link
to), so they share torch's threads instead of starting a second pool. Where the CPU lacks
AVX2 or FMA, there is no compiler, or the build fails, `load` returns None and callers keep
torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("max_kernels")

FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")


def cpu_has_avx2_fma() -> bool:
    """Whether /proc/cpuinfo lists AVX2 and FMA (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {"avx2", "fma"} <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return False


def compiler() -> str | None:
    """The C compiler the kernels are built with, if any."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cache_dir() -> Path:
    return Path(os.environ.get("MAX_KERNEL_CACHE") or Path.home() / ".cache" / "max" / "kernels")


def _build(source: Path) -> Path | None:
    """The compiled library for `source` (built now if not cached), None if it cannot be."""
    cc = compiler()
    if cc is None:
        logger.debug("%s: no C compiler; torch's ops stay", source.name)
        return None
    # The shared header is part of every kernel: a change to it rebuilds them all.
    parts = [source.read_bytes(), Path(__file__).with_name("cpu_native.h").read_bytes(), " ".join(FLAGS).encode()]
    digest = hashlib.sha256(b"".join(parts)).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed: processes building at once never load half a file.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([cc, *FLAGS, str(source), "-o", str(out)], check=True, capture_output=True, timeout=120)
            os.replace(out, target)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        logger.warning("building %s failed (%s) %s; torch's ops stay", source.name, e, detail.decode()[-500:])
        return None
    return target


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from `<name>.c` beside this module, None where it cannot run here."""
    if not cpu_has_avx2_fma():
        return None
    path = _build(Path(__file__).with_name(f"{name}.c"))
    if path is None:
        return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        logger.warning("loading %s failed (%s); torch's ops stay", path, e)
        return None


# ctypes shorthands for the kernels' signatures.
I64, PTR, INT, F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def library(name: str, signatures: Mapping[str, tuple[Sequence[Any], Any]]) -> ctypes.CDLL | None:
    """`load(name)` with each function's (argument types, result type) set, None where the
    library cannot run here."""
    lib = load(name)
    if lib is not None:
        for function, (argtypes, restype) in signatures.items():
            getattr(lib, function).argtypes = list(argtypes)
            getattr(lib, function).restype = restype
    return lib


def rows_times_weight(function: Any, kernel: str, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """y [M, n] = x [M, k] times a packed weight of n output features and k input features,
    in x's dtype (bfloat16 or float32), by the C `function` of the weight kernels' common
    signature (x, x is bfloat16, M, K, weight, scales, n, y, threads) on torch's threads.
    `kernel` names the caller in errors; the weight is the caller's to check."""
    if x.dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"{kernel} takes bfloat16 or float32 rows, got {x.dtype}")
    x = x.contiguous()
    m = x.shape[0]
    if x.shape[1] != k:
        raise ValueError(f"x [{m}, {x.shape[1]}] does not fit the weight [{n}, {k}] ({tuple(weight.shape)} packed)")
    y = torch.empty((m, n), dtype=x.dtype)
    rc = function(
        x.data_ptr(), int(x.dtype == torch.bfloat16), m, k, weight.data_ptr(), scales.data_ptr(), n, y.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if rc != 0:
        raise MemoryError(f"{kernel}: the kernel could not allocate its row buffers")
    return y
