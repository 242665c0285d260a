"""Reading adapted checkpoint tensors into a model's parameters, with exact error messages.

`check_checkpoint` compares the checkpoint with what the network needs from the shapes
alone (it works on a network built on the `meta` device, before anything is allocated);
`fill_parameter` reads one parameter's tensors into its storage, a block of rows at a time
for large tensors, so the host holds no more than a block whatever the model's size.
"""

from __future__ import annotations

import torch
from torch import nn

from max.errors import MaxError
from max.nn.checkpoint_layout import Concat, Shard, Source, Stack, leaves, parameter_sources
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor, numel, rows_per_block


def check_checkpoint(module: nn.Module, state: Checkpoint) -> dict[str, Source]:
    """Raises MaxError naming the tensor and file when `state` lacks a tensor `module`
    needs, has one it does not, or has one of another shape. Returns each parameter's
    source. Nothing is read or allocated (`module` may live on the meta device)."""
    sources = parameter_sources(module)
    needed = {leaf for source in sources.values() for leaf in leaves(source)}
    missing = sorted(needed - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MaxError(f"the checkpoint lacks tensors the model needs: {shown}")
    unexpected = sorted(name for name in set(state) - needed if not state[name].optional)
    if unexpected:
        entry = state[unexpected[0]]
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} (loaded as {unexpected[0]!r}) matches no "
            f"parameter of the model ({len(unexpected)} such tensors)"
        )
    for name, param in module.named_parameters():
        shape = _source_shape(sources[name], state)
        if shape != tuple(param.shape):
            entry = state[next(leaves(sources[name]))]
            what = f"tensor {entry.name!r} has shape" if isinstance(sources[name], str) else (
                f"tensors {', '.join(repr(state[n].name) for n in leaves(sources[name]))} make up shape"
            )
            raise MaxError(f"{entry.source}: {what} {shape}, the model expects {tuple(param.shape)} for {name!r}")
    return sources


def load_checkpoint_into(
    module: nn.Module, state: Checkpoint, dtype: torch.dtype, device: torch.device
) -> None:
    """Copies every parameter of an allocated `module` from `state` (already in the model's
    names). A fused parameter (see `max.nn.checkpoint_layout`) is filled from the tensors
    its layer names. (`dtype` and `device` are the parameters' own; kept for callers.)"""
    del dtype, device
    sources = check_checkpoint(module, state)
    with torch.no_grad():
        for name, param in module.named_parameters():
            fill_parameter(param, sources[name], state)


def fill_parameter(target: torch.Tensor, source: Source, state: Checkpoint) -> None:
    """Reads the tensors of `source` into `target` (a parameter, or a part of one), decoded
    into the target's dtype on the host and copied to its device block by block."""
    if isinstance(source, Stack):
        for i, part in enumerate(source.parts):
            fill_parameter(target[i], part, state)
        return
    if isinstance(source, Concat):
        offset = 0
        for part in source.parts:
            rows = _source_shape(part, state)[0]
            fill_parameter(target[offset : offset + rows], part, state)
            offset += rows
        return
    if isinstance(source, Shard):
        entry = state[source.name]
        rows = source.stop - source.start
        _copy(target.narrow(source.dim, 0, rows), entry, source.dim, source.start)
        if rows < source.size:
            target.narrow(source.dim, rows, source.size - rows).zero_()  # padding of a split vocabulary
        return
    entry = state[source]
    if tuple(entry.shape) != tuple(target.shape):
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} has shape {tuple(entry.shape)}, "
            f"the model expects {tuple(target.shape)}"
        )
    _copy(target, entry, None, 0)


def _copy(target: torch.Tensor, entry: CheckpointTensor, dim: int | None, start: int) -> None:
    """target <- entry (dim None), or entry's [start, start + target's size) along `dim`.

    Whole tensors and row slices larger than a read block go in blocks of rows where the
    format reads row ranges alone; everything is read straight into the target's dtype.
    """
    dtype = target.dtype
    if dim not in (None, 0) or not entry.sliceable or target.dim() == 0:
        value = entry.load(dtype) if dim is None else entry.load_slice(dtype, dim, start, start + target.shape[dim])
        _check_read(entry, value, target)
        target.copy_(value)
        return
    rows = target.shape[0]
    step = rows_per_block(tuple(target.shape), dtype) if numel(tuple(target.shape)) else max(rows, 1)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        if dim is None and n == rows:
            value = entry.load(dtype)
        else:
            value = entry.load_slice(dtype, 0, start + r, start + r + n)
        _check_read(entry, value, target[r : r + n])
        target[r : r + n].copy_(value)


def _check_read(entry: CheckpointTensor, value: torch.Tensor, target: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} read with shape {tuple(value.shape)}, "
            f"the model expects {tuple(target.shape)}"
        )


def _source_shape(source: Source, state: Checkpoint) -> tuple[int, ...]:
    """The shape a source assembles, from the checkpoint's metadata (nothing is read)."""
    if isinstance(source, str):
        return tuple(state[source].shape)
    if isinstance(source, Shard):
        entry = state[source.name]
        shape = list(entry.shape)
        if source.dim >= len(shape) or shape[source.dim] != source.full:
            raise MaxError(
                f"{entry.source}: tensor {entry.name!r} has shape {tuple(shape)}, the model expects "
                f"{source.full} along dimension {source.dim} (split across tensor-parallel ranks)"
            )
        shape[source.dim] = source.size
        return tuple(shape)
    shapes = [_source_shape(p, state) for p in source.parts]
    if isinstance(source, Stack):
        return (len(shapes), *shapes[0]) if len(set(shapes)) == 1 else ()
    if len({s[1:] for s in shapes}) != 1:
        return ()
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def dummy_generator(device: torch.device, seed: int, cache: dict[torch.device, torch.Generator]) -> torch.Generator:
    """One seeded generator per device, shared by every parameter filled there."""
    if device not in cache:
        cache[device] = torch.Generator(device=device).manual_seed(seed)
    return cache[device]


def fill_dummy_parameter(name: str, param: torch.Tensor, generator: torch.Generator) -> None:
    """A random value of the real shape (`--load-format dummy`): norm weights one (an
    identity), everything else N(0, 0.02), so activations stay in range over many layers."""
    owner = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    if "norm" in owner:
        param.fill_(1.0)
    else:
        param.normal_(0.0, 0.02, generator=generator)


def fill_dummy_weights(module: nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes for every parameter of an allocated `module`."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            fill_dummy_parameter(name, param, dummy_generator(param.device, seed, generators))
