"""How a fused parameter is laid out in checkpoints, which store its parts separately.

Layers fuse projections that run on the same input into one matrix (q, k and v into
`qkv_proj`; gate and up into `gate_up_proj`) and stack the experts of a mixture into one
3-D tensor, as gpt-fast does in a load hook, so that a step runs one matrix product instead
of three. Checkpoints keep the parts apart (`q_proj.weight`, `experts.7.up_proj.weight`).
A layer declares the correspondence with `checkpoint_layout()`, mapping each fused
parameter to a `Concat` or `Stack` of checkpoint names (relative to the layer); the weight
loader fills the fused parameter from those tensors and reports errors by their names.
Under tensor parallelism a part is a `Shard`: the rank's rows or columns of the tensor,
which the loader reads alone where the format allows (safetensors slices).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Concat:
    """A parameter that is its parts joined along dimension 0 (q, k, v -> qkv)."""

    parts: tuple[Source, ...]


@dataclass(frozen=True)
class Stack:
    """A parameter whose index i along dimension 0 is part i (one part per expert)."""

    parts: tuple[Source, ...]


@dataclass(frozen=True)
class Shard:
    """Rows (dim 0) or columns (dim 1) [start, stop) of a checkpoint tensor whose full size
    along `dim` is `full`: a tensor-parallel rank's slice. The slice is zero-padded to `size`
    along `dim` (a vocabulary split into equal parts)."""

    name: str
    dim: int
    start: int
    stop: int
    full: int
    size: int

    @classmethod
    def of(cls, name: str, dim: int, bounds: tuple[int, int], full: int, size: int | None = None) -> Shard:
        """The slice `bounds` of `name` along `dim`."""
        start, stop = bounds
        return cls(name, dim, start, stop, full, size if size is not None else stop - start)


Source = str | Concat | Stack | Shard


def _prefixed(source: Source, prefix: str) -> Source:
    if isinstance(source, str):
        return prefix + source
    if isinstance(source, Shard):
        return Shard(prefix + source.name, source.dim, source.start, source.stop, source.full, source.size)
    return type(source)(tuple(_prefixed(p, prefix) for p in source.parts))


def leaves(source: Source) -> Iterator[str]:
    """The checkpoint names a source reads, in order."""
    if isinstance(source, str):
        yield source
    elif isinstance(source, Shard):
        yield source.name
    else:
        for part in source.parts:
            yield from leaves(part)


def whole_or_shard(name: str, dim: int, bounds: tuple[int, int], full: int) -> Source:
    """`name` itself when `bounds` cover it all (a single process), else its slice."""
    return name if bounds == (0, full) else Shard.of(name, dim, bounds, full)


def parameter_sources(module: nn.Module) -> dict[str, Source]:
    """Each parameter of `module` (by full name) and the checkpoint tensors it is read from.

    A parameter that no layer declares is read from the tensor of its own name.
    """
    sources: dict[str, Source] = {name: name for name, _ in module.named_parameters()}
    for prefix, sub in module.named_modules():
        layout = getattr(sub, "checkpoint_layout", None)
        if layout is None:
            continue
        dotted = f"{prefix}." if prefix else ""
        for local, source in layout().items():
            name = dotted + local
            if name in sources:
                sources[name] = _prefixed(source, dotted)
    return sources
