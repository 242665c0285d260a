"""Checkpoint tensors, loaded lazily, whatever file format they come from.

A checkpoint is a mapping from tensor name (in the checkpoint's own naming) to a
`CheckpointTensor` that knows its file and shape and reads the data only when asked.
Architecture weight adapters rename (and, where needed, transform) these entries into the
model's parameter names; the loader then reads each tensor straight into its parameter.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


class WeightsFormat(enum.StrEnum):
    """Checkpoint file formats."""

    safetensors = "safetensors"
    gguf = "gguf"


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor of a checkpoint: where it is and how to read it (as `dtype`)."""

    name: str
    shape: tuple[int, ...]
    source: str  # the file it comes from, for error messages
    read: Callable[[torch.dtype], torch.Tensor]
    encoding: str = ""
    # Reads only [start, stop) along a dimension, where the format allows (safetensors).
    read_slice: Callable[[torch.dtype, int, int, int], torch.Tensor] | None = None
    # The dtype the file stores (None where decoding makes it moot, e.g. GGUF blocks).
    stored_dtype: torch.dtype | None = None
    # One of two forms of the same weights that an adapter offers (e.g. MXFP4 experts packed
    # and decoded): read if the model asks for it, not an error if it does not.
    optional: bool = False

    def load(self, dtype: torch.dtype) -> torch.Tensor:
        """Reads (and, for quantized formats, decodes) the tensor into `dtype`."""
        return self.read(dtype)

    def load_slice(self, dtype: torch.dtype, dim: int, start: int, stop: int) -> torch.Tensor:
        """Indices [start, stop) of the tensor along `dim` (a tensor-parallel shard), reading
        only that slice where the format allows it."""
        if self.read_slice is not None:
            return self.read_slice(dtype, dim, start, stop)
        return self.load(dtype).narrow(dim, start, stop - start)

    def transformed(
        self, fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...] | None = None
    ) -> CheckpointTensor:
        """The same tensor with `fn` applied after reading (e.g. a GGUF Q/K un-permute)."""
        read = self.read
        return CheckpointTensor(
            self.name, shape or self.shape, self.source, lambda dtype: fn(read(dtype)), self.encoding,
            stored_dtype=self.stored_dtype, optional=self.optional,
        )

    def as_optional(self) -> CheckpointTensor:
        """The same tensor, marked as one form among others (see `optional`)."""
        return dataclasses.replace(self, optional=True)

    @property
    def sliceable(self) -> bool:
        """Whether `load_slice` reads only the slice (rather than the whole tensor)."""
        return self.read_slice is not None


# Reads of a large tensor go in blocks of about this many bytes of rows: the host memory
# a load holds at once, whatever the model's size.
READ_BLOCK_BYTES = 256 * 2**20


def numel(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of `shape`."""
    n = 1
    for d in shape:
        n *= d
    return n


def rows_per_block(shape: tuple[int, ...], dtype: torch.dtype, block_bytes: int = READ_BLOCK_BYTES) -> int:
    """How many rows (dimension 0) of a tensor of `shape` in `dtype` make about
    `block_bytes` (at least one)."""
    row = numel(shape[1:]) * torch.empty((), dtype=dtype).element_size()
    return max(1, block_bytes // max(row, 1))


Checkpoint = Mapping[str, CheckpointTensor]
