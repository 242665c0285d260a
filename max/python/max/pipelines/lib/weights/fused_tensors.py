"""Checkpoint tensors that hold several projections stacked along their rows.

Some checkpoints store fused projections (Phi-3's `qkv_proj` and `gate_up_proj`); `max.nn`
layers declare their fused parameters by the separate names (`q_proj`, `gate_proj`...), so
an adapter splits the fused tensor into lazily read row ranges, each of which reads only
its own rows (and, under tensor parallelism, only its shard of them) where the format can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import CheckpointTensor


def _rows(tensor: CheckpointTensor, start: int, stop: int) -> CheckpointTensor:
    def read(dtype: torch.dtype) -> torch.Tensor:
        return tensor.load_slice(dtype, 0, start, stop)

    def read_slice(dtype: torch.dtype, dim: int, lo: int, hi: int) -> torch.Tensor:
        if dim == 0:
            return tensor.load_slice(dtype, 0, start + lo, start + hi)
        return read(dtype).narrow(dim, lo, hi - lo)

    shape = (stop - start, *tensor.shape[1:])
    return CheckpointTensor(
        tensor.name, shape, tensor.source, read, tensor.encoding, read_slice=read_slice, stored_dtype=tensor.stored_dtype
    )


def split_rows(tensor: CheckpointTensor, sizes: Sequence[int]) -> list[CheckpointTensor]:
    """`tensor` cut along dimension 0 into consecutive parts of `sizes` rows."""
    if sum(sizes) != tensor.shape[0]:
        raise MaxError(
            f"{tensor.source}: {tensor.name} has {tensor.shape[0]} rows; the config expects "
            f"{' + '.join(map(str, sizes))} = {sum(sizes)}"
        )
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [_rows(tensor, a, b) for a, b in zip(bounds, bounds[1:])]
