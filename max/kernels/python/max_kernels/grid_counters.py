"""Arrival counters: the last program of a group to finish does the group's final step.

Some decode kernels end with a step that needs the results of several programs: the
router's top-k over every expert's logit, the sum of a token's k expert outputs. A second
launch for that step costs more than the step (a launch gap, and a torch kernel breaks the
chain of programmatic dependent launches); instead each program writes its part, then
adds one to its group's counter in device memory, and the program that brings the counter
to the group's size reads the parts back, finishes, and sets the counter back to zero.

The counters are one zeroed int32 buffer per device, allocated on first use and kept:
every kernel leaves the counters it used at zero, so the next one (in stream order, or
after its `gdc_wait` under PDL, which orders it after every earlier kernel) finds them
zeroed. Kernels that share the buffer must therefore never run concurrently (one stream
per device, as the engine runs). The buffer cannot be allocated inside a CUDA-graph
capture; `counters` then returns None and the caller takes its other path (the capture
warm-up, which runs eagerly first, allocates it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Enough for the router (one) and the expert sums of a few tokens (tokens x row tiles).
NUM_COUNTERS = 1 << 14

_buffers: dict[tuple[str, int | None], torch.Tensor] = {}


def counters(device: torch.device, needed: int = 1) -> torch.Tensor | None:
    """The device's zeroed int32 counters, or None where there are fewer than `needed` or
    they would have to be allocated inside a CUDA-graph capture."""
    if needed > NUM_COUNTERS:
        return None
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    key = (device.type, index)
    buffer = _buffers.get(key)
    if buffer is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        buffer = torch.zeros(NUM_COUNTERS, dtype=torch.int32, device=torch.device(device.type, index))
        _buffers[key] = buffer
    return buffer


@triton.jit
def arrive_last(counter_ptr, group_size):
    """Called by every program of a group after its last store of a part: True in the one
    program that arrives last, which may then read every part and must call `reset`.

    The barrier orders the program's stores before its (acquire-release, device-wide)
    increment, so the last program, whose increment reads every other's, sees their parts;
    it should read them with `cache_modifier=".cg"` (from L2, past its own L1)."""
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return ticket == group_size - 1


@triton.jit
def reset(counter_ptr):
    """Sets a group's counter back to zero (by the last program, once it has arrived)."""
    tl.atomic_xchg(counter_ptr, 0)
