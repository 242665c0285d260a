"""Programmatic dependent launch (PDL): the next kernel starts while this one finishes.

On Hopper and later, a kernel launched with PDL may become resident on the GPU before the
kernel ahead of it in the stream has finished; it must wait (`gdc_wait`) before it reads
anything that kernel wrote, or writes anything it reads. What comes before the wait runs
early: the launch itself, and loads that do not depend on the previous kernel (a weight).
A decode step of an 8B model is ~400 short kernels in a CUDA graph, each paying a launch
gap and a ramp-up; PDL hides part of both (CUDA graphs capture the dependency as a
programmatic edge).

Each kernel that takes part has a `USE_PDL: tl.constexpr` parameter and calls
`pdl_prologue(USE_PDL)` (or the two primitives, with independent loads between them)
before its first dependent access; its wrapper passes `**pdl_launch(tensor)`, which turns
both on where the GPU and the installed Triton support it. `configure(pdl=False)` (the CLI's `--no-pdl`)
turns PDL off (for comparison).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting, switch

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # a Triton without grid dependency control: PDL stays off

    @triton.jit
    def gdc_launch_dependents():
        """No-op stand-in (this Triton has no grid dependency control)."""

    @triton.jit
    def gdc_wait():
        """No-op stand-in (this Triton has no grid dependency control)."""

    _TRITON_HAS_PDL = False
else:
    _TRITON_HAS_PDL = True


@triton.jit
def pdl_prologue(USE_PDL: tl.constexpr):  # noqa: N803 (Triton constexpr convention)
    """Lets the next kernel launch now, then waits until the previous one has finished and
    its writes are visible. Call before the first load or store that depends on it."""
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()


@functools.cache
def _launch_option_supported() -> bool:
    """Whether this Triton's NVIDIA backend takes the `launch_pdl` launch option."""
    if not _TRITON_HAS_PDL:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@functools.cache
def _device_supports_pdl(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_enabled(t: torch.Tensor) -> bool:
    """Whether kernels on `t`'s device launch with PDL: a CUDA GPU of capability 9.0+, a
    Triton with grid dependency control, not the interpreter, and the switch on
    (`configure(pdl=False)`, the CLI's `--no-pdl`, turns it off)."""
    if not t.is_cuda or interpreting() or not switch("pdl"):
        return False
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _launch_option_supported() and _device_supports_pdl(index)


def pdl_launch(t: torch.Tensor) -> dict:
    """Keyword arguments of a kernel launch on `t`'s device: the kernel's `USE_PDL` and,
    when on, Triton's `launch_pdl` option."""
    if pdl_enabled(t):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}
