"""Device memory at start-up: will the model fit, and where did the memory go.

Before anything is allocated, `check_fits` compares what the model needs on a GPU (its
weights as they will be held, the KV cache of one full-length request, one step's
activations) with what the card has free under `--gpu-memory-utilization`, and refuses
with the figures and what to try instead. Once the engine is built, `MemoryReport` says
where the memory went (weights, their peak while loading, KV cache, activations, CUDA
graphs): logged at start-up and exported on `/metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from max.errors import MaxError

_GIB = 2**30


def gib(n: int | float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / _GIB:.2f} GiB"


def tensor_bytes(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a tensor of `shape` in `dtype`."""
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


def planned_weight_bytes(network: nn.Module, dtype: torch.dtype, replaced: dict[str, int] | None = None) -> int:
    """Bytes a network built on the meta device will hold once loaded: floating-point
    parameters in `dtype`, others in their own dtype; the layers named in `replaced` (module
    path -> bytes) count what their replacement holds instead."""
    replaced = replaced or {}
    total = sum(replaced.values())
    skip = tuple(f"{path}." for path in replaced)
    for name, param in network.named_parameters():
        if name.startswith(skip):
            continue
        total += tensor_bytes(param.shape, dtype if param.is_floating_point() else param.dtype)
    return total


def check_fits(
    device: torch.device,
    utilization: float,
    weights: int,
    kv_one_request: int,
    activations: int,
    max_length: int,
) -> None:
    """Raises MaxError, before anything is allocated, when the model cannot run on `device`:
    what it needs, what the card has, and what to try. CPUs are not checked (their memory is
    the machine's, shared with everything else)."""
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    allowed = free - (1.0 - utilization) * total
    needed = weights + kv_one_request + activations
    if needed <= allowed:
        return
    name = torch.cuda.get_device_name(device)
    raise MaxError(
        f"the model does not fit on {device} ({name}): it needs {gib(needed)} (weights {gib(weights)}, "
        f"KV cache for one request of {max_length} tokens {gib(kv_one_request)}, activations "
        f"{gib(activations)}); the card has {gib(free)} free of {gib(total)}, of which "
        f"--gpu-memory-utilization {utilization:g} leaves {gib(max(allowed, 0))}. Try "
        "--quantization fp8 (about half the weights' bytes), a smaller --max-length or "
        "--kv-cache-dtype fp8 (less KV cache), a higher --gpu-memory-utilization, or more GPUs "
        "(--tensor-parallel-size N)"
    )


@dataclass
class MemoryReport:
    """Where a rank's device memory went at start-up, in bytes (`load_peak` and
    `cuda_graphs` are None where they were not measured: on the CPU, without graphs)."""

    device: str
    weights: int
    load_peak: int | None
    kv_cache: int
    activations: int
    cuda_graphs: int | None = None
    total: int | None = None

    def summary(self) -> str:
        """One log line."""
        parts = [f"weights {gib(self.weights)}"]
        if self.load_peak is not None:
            parts.append(f"peak while loading {gib(self.load_peak)}")
        parts += [f"KV cache {gib(self.kv_cache)}", f"activations (reserved) {gib(self.activations)}"]
        if self.cuda_graphs is not None:
            parts.append(f"CUDA graphs {gib(self.cuda_graphs)}")
        if self.total is not None:
            parts.append(f"of {gib(self.total)} on the card")
        return f"memory on {self.device}: " + ", ".join(parts)

    def components(self) -> dict[str, int]:
        """Each measured component (for `/metrics`), by name."""
        return {k: v for k, v in asdict(self).items() if k != "device" and isinstance(v, int)}
