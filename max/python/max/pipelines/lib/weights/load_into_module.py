"""Reading adapted checkpoint tensors into a model's parameters, with exact error messages."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from max.errors import MaxError
from max.nn.checkpoint_layout import Concat, Shard, Source, Stack, leaves, parameter_sources
from max.pipelines.lib.weights.checkpoint import Checkpoint


def load_checkpoint_into(
    module: nn.Module, state: Checkpoint, dtype: torch.dtype, device: torch.device
) -> None:
    """Copies every parameter of `module` from `state` (already in the model's names).

    A fused parameter (see `max.nn.checkpoint_layout`) is filled from the tensors its layer
    names. Missing and unexpected tensors, and shape mismatches, are errors that name the
    tensor and the file it came from.
    """
    params = dict(module.named_parameters())
    sources = parameter_sources(module)
    needed = {leaf for source in sources.values() for leaf in leaves(source)}
    missing = sorted(needed - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MaxError(f"the checkpoint lacks tensors the model needs: {shown}")
    unexpected = sorted(set(state) - needed)
    if unexpected:
        entry = state[unexpected[0]]
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} (loaded as {unexpected[0]!r}) matches no "
            f"parameter of the model ({len(unexpected)} such tensors)"
        )
    for name, param in params.items():
        shape = _source_shape(sources[name], state)
        if shape != tuple(param.shape):
            entry = state[next(leaves(sources[name]))]
            what = f"tensor {entry.name!r} has shape" if isinstance(sources[name], str) else (
                f"tensors {', '.join(repr(state[n].name) for n in leaves(sources[name]))} make up shape"
            )
            raise MaxError(f"{entry.source}: {what} {shape}, the model expects {tuple(param.shape)} for {name!r}")
    # A progress bar for loads that take a while (it hides itself when stderr is no terminal).
    total_bytes = sum(p.numel() * p.element_size() for p in params.values())
    progress = tqdm(
        params.items(), desc="Loading weights", unit="tensor", disable=None if total_bytes > 2**28 else True
    )
    with torch.no_grad():
        for name, param in progress:
            _fill(param, sources[name], state, dtype)


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


def _fill(target: torch.Tensor, source: Source, state: Checkpoint, dtype: torch.dtype) -> None:
    """Reads the tensors of `source` into `target` (a parameter or a slice of one)."""
    if isinstance(source, Stack):
        for i, part in enumerate(source.parts):
            _fill(target[i], part, state, dtype)
        return
    if isinstance(source, Concat):
        offset = 0
        for part in source.parts:
            rows = _source_shape(part, state)[0]
            _fill(target[offset : offset + rows], part, state, dtype)
            offset += rows
        return
    if isinstance(source, Shard):
        value = state[source.name].load_slice(dtype, source.dim, source.start, source.stop)
        rows = source.stop - source.start
        target.narrow(source.dim, 0, rows).copy_(value.to(device=target.device, dtype=target.dtype))
        if rows < source.size:
            target.narrow(source.dim, rows, source.size - rows).zero_()  # padding of a split vocabulary
        return
    entry = state[source]
    value = entry.load(dtype)
    if tuple(value.shape) != tuple(target.shape):
        raise MaxError(
            f"{entry.source}: tensor {entry.name!r} read with shape {tuple(value.shape)}, "
            f"the model expects {tuple(target.shape)}"
        )
    target.copy_(value.to(device=target.device, dtype=target.dtype))


def fill_dummy_weights(module: nn.Module, seed: int = 0) -> None:
    """Random weights of the real shapes (`--load-format dummy`), for speed measurements.

    Norm weights get one (an identity), everything else N(0, 0.02), so activations stay
    in range over many layers.
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if "norm" in owner:
                param.fill_(1.0)
                continue
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, 0.02, generator=generators[param.device])
