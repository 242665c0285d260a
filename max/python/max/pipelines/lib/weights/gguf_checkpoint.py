"""GGUF checkpoints: tensors decoded from their GGML encodings on read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.gguf_dequant import dequantize
from max.pipelines.lib.weights.gguf_reader import GGML_TYPES, GGUFFile, GGUFTensorInfo


def _row_bytes(info: GGUFTensorInfo) -> int | None:
    """Bytes of one row (dimension 0) of a tensor of two or more dimensions, whose rows are
    whole blocks; None otherwise."""
    if len(info.shape) < 2:
        return None
    _, block, block_bytes = GGML_TYPES[info.ggml_type]
    per_row = info.nbytes // info.shape[0] if info.shape[0] else 0
    inner = 1
    for d in info.shape[1:]:
        inner *= d
    return per_row if inner % block == 0 and per_row * info.shape[0] == info.nbytes else None


def _tensor(gguf: GGUFFile, info: GGUFTensorInfo) -> CheckpointTensor:
    """A lazily decoded tensor; a slice of rows decodes only those rows' blocks."""
    source = str(gguf.path)

    def read(dtype: torch.dtype) -> torch.Tensor:
        value = dequantize(gguf.tensor_bytes(info.name), info, dtype, source)
        gguf.release(info.name)
        return value

    row_bytes = _row_bytes(info)
    read_slice = None
    if row_bytes is not None:

        def read_slice(dtype: torch.dtype, dim: int, start: int, stop: int) -> torch.Tensor:
            if dim != 0:
                return read(dtype).narrow(dim, start, stop - start).clone()
            part = dataclasses.replace(
                info, shape=(stop - start, *info.shape[1:]), offset=info.offset + start * row_bytes,
                nbytes=(stop - start) * row_bytes,
            )
            value = dequantize(gguf.tensor_bytes(info.name, start * row_bytes, stop * row_bytes), part, dtype, source)
            gguf.release(info.name)
            return value

    return CheckpointTensor(info.name, info.shape, source, read, info.type_name, read_slice=read_slice)


def open_gguf(path: Path | GGUFFile) -> Checkpoint:
    """The tensors of a GGUF file, named as in the file (e.g. `blk.0.attn_q.weight`)."""
    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)
    return {name: _tensor(gguf, info) for name, info in gguf.tensors.items()}
