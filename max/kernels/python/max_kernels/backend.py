"""The one dispatch point of the kernel library: Triton on CUDA, the torch reference elsewhere.

Every public op in `max_kernels` asks `use_triton(tensor)` once and calls either its Triton
implementation or its plain-torch reference. The backend can be forced to the reference
for comparison (`set_backend("torch")`), which is what `--kernels torch` on the command line
does. `configure` also sets the two switches of the GPU's decode path (the one-row GEMV and
programmatic dependent launch), as the resolved plan says; the library reads no
environment variable of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "triton")

_backend = "auto"
# The one-row Triton GEMV (off: cuBLAS) and programmatic dependent launch (off: plain launches).
_switches = {"gemv": True, "pdl": True}


def set_backend(name: str) -> None:
    """`auto`: Triton kernels on CUDA tensors, the reference elsewhere; `torch`: reference only;
    `triton`: Triton kernels on every device (tests run them on CPU tensors through Triton's
    interpreter, `TRITON_INTERPRET=1`)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} (choose from {', '.join(BACKENDS)})")
    _backend = name


def configure(backend: str | None = None, gemv: bool | None = None, pdl: bool | None = None) -> None:
    """Sets the backend and the decode path's switches (each left as it is when None)."""
    if backend is not None:
        set_backend(backend)
    if gemv is not None:
        _switches["gemv"] = gemv
    if pdl is not None:
        _switches["pdl"] = pdl


def switch(name: str) -> bool:
    """Whether the decode path's switch `name` ("gemv" or "pdl") is on."""
    return _switches[name]


def get_backend() -> str:
    """The backend in force."""
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Runs the enclosed code with another backend, then restores the previous one."""
    saved = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(saved)


def interpreting() -> bool:
    """Triton kernels run in Triton's CPU interpreter (`TRITON_INTERPRET=1`), as in CI."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on `t` should run its Triton kernel."""
    return _backend == "triton" or (_backend == "auto" and t.is_cuda)


def unspecialized(ints: tuple[str, ...] = (), pointers: tuple[str, ...] = ()) -> dict:
    """`triton.jit` keyword arguments that keep Triton from compiling another variant of a
    kernel for each class of these arguments' values: integers equal to 1 or divisible by
    16, pointers aligned to 16 bytes or not.

    Arguments whose values change from step to step in eager steps (a row count, a page
    table's width, views at an offset into one upload) would otherwise make the first step
    with a new class wait for the compiler mid-run (~0.5 s per variant of the prefill
    kernel). Pass only arguments that the kernel reads as scalars or gathers, where the
    specialization buys nothing. Triton before `do_not_specialize_on_alignment` treats
    pointers listed in `do_not_specialize` the same way.
    """
    import inspect

    import triton

    try:
        params = inspect.signature(triton.jit).parameters
    except (TypeError, ValueError):
        params = {}
    if "do_not_specialize_on_alignment" in params:
        return {"do_not_specialize": list(ints), "do_not_specialize_on_alignment": list(pointers)}
    return {"do_not_specialize": [*ints, *pointers]}
