"""Streaming a checkpoint into a network built on the meta device: the peak is the weights.

A network is built on `meta` (shapes only). `load_network` then walks its modules in order
and, for each parameter, allocates the final tensor on the final device in the final dtype
and fills it from the checkpoint (a block of rows at a time) or with random values
(`--load-format dummy`). A layer that a quantization replaces (FP8, int8/int4 on the CPU)
is replaced as soon as its own weights are in, so its unquantized weight lives only while
that one layer is converted. Nothing is allocated in float32 first and the host never holds
more than one read block: peak device memory is the final weights plus one layer, peak
host memory one block (`weights.checkpoint.READ_BLOCK_BYTES`) plus the decoding's
temporaries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from max.nn.checkpoint_layout import Source
from max.pipelines.lib.weights.checkpoint import Checkpoint
from max.pipelines.lib.weights.load_into_module import (
    check_checkpoint,
    dummy_generator,
    fill_dummy_parameter,
    fill_parameter,
)

logger = logging.getLogger("max.pipelines")


@dataclass(frozen=True)
class LayerTransform:
    """What happens to one layer once its weights are loaded: its floating-point parameters
    are read in `read_dtype` (None: the network's dtype), then `apply(layer)` returns the
    module that takes its place (e.g. an FP8 or int4 layer made from its weights)."""

    apply: Callable[[nn.Module], nn.Module]
    read_dtype: torch.dtype | None = None


@dataclass
class LoadReport:
    """What a load did: bytes of the loaded network's weights, and the peak device memory
    allocated while loading (CUDA only; None elsewhere)."""

    weight_bytes: int
    peak_bytes: int | None
    seconds: float


def load_network(
    network: nn.Module,
    state: Checkpoint | None,
    device: torch.device,
    dtype: torch.dtype,
    transforms: Mapping[str, LayerTransform] | None = None,
    seed: int = 0,
) -> LoadReport:
    """Materializes `network` (built on `meta`) on `device`, parameter by parameter.

    Floating-point parameters take `dtype` (or their layer transform's `read_dtype`),
    others keep the dtype their layer declared (e.g. packed uint8 blocks). With `state`
    None the weights are random (`--load-format dummy`): a module with a
    `fill_dummy(name, tensor, generator)` method may fill its own (packed formats need
    values in range; it returns False to leave a parameter to the default). Buffers are allocated likewise and recomputed by a module's
    `init_buffers(device)`. A checkpoint that does not fit the network is refused before
    anything is allocated.
    """
    transforms = dict(transforms or {})
    sources = check_checkpoint(network, state) if state is not None else None
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    generators: dict[torch.device, torch.Generator] = {}
    modules = list(network.named_modules())
    total = sum(p.numel() * p.element_size() for p in network.parameters())
    progress = tqdm(
        total=len(modules), desc="Loading weights", unit="module", disable=None if total > 2**28 else True
    )
    with torch.no_grad():
        for i, (path, module) in enumerate(modules):
            # The list must not keep a replaced layer (and its unquantized weight) alive.
            modules[i] = None
            transform = transforms.get(path)
            float_dtype = transform.read_dtype if transform is not None and transform.read_dtype else dtype
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                full = f"{path}.{name}" if path else name
                value = torch.empty(
                    param.shape, dtype=float_dtype if param.is_floating_point() else param.dtype, device=device
                )
                _fill(module, name, full, value, sources, state, generators, seed)
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = torch.empty(
                        buffer.shape, dtype=dtype if buffer.is_floating_point() else buffer.dtype, device=device
                    )
            init = getattr(module, "init_buffers", None)
            if init is not None:
                init(device)
            if transform is not None:
                _replace(network, path, transform.apply(module))
            progress.update(1)
    progress.close()
    # Parameters and persistent buffers (a quantized layer's codes and scales), not the
    # tables a module recomputes (rotary cos/sin).
    weight_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return LoadReport(weight_bytes, peak, time.perf_counter() - start)


def _fill(
    module: nn.Module,
    name: str,
    full: str,
    value: torch.Tensor,
    sources: dict[str, Source] | None,
    state: Checkpoint | None,
    generators: dict[torch.device, torch.Generator],
    seed: int,
) -> None:
    """One parameter's value: from the checkpoint, or random of the right kind."""
    if sources is not None:
        fill_parameter(value, sources[full], state)
        return
    generator = dummy_generator(value.device, seed, generators)
    own = getattr(module, "fill_dummy", None)
    if own is None or not own(name, value, generator):
        fill_dummy_parameter(full, value, generator)


def _replace(network: nn.Module, path: str, new: nn.Module) -> None:
    """Puts `new` where the module at `path` was."""
    parent_path, _, name = path.rpartition(".")
    parent = network.get_submodule(parent_path) if parent_path else network
    setattr(parent, name, new)
