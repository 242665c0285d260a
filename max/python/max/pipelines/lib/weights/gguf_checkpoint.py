"""GGUF checkpoints: tensors decoded from their GGML encodings on read."""

from __future__ import annotations

from pathlib import Path

import torch

from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.gguf_dequant import dequantize
from max.pipelines.lib.weights.gguf_reader import GGUFFile


def open_gguf(path: Path | GGUFFile) -> Checkpoint:
    """The tensors of a GGUF file, named as in the file (e.g. `blk.0.attn_q.weight`)."""
    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)
    tensors: dict[str, CheckpointTensor] = {}
    for name, info in gguf.tensors.items():

        def read(dtype: torch.dtype, info=info) -> torch.Tensor:
            return dequantize(gguf.tensor_bytes(info.name), info, dtype, str(gguf.path))

        tensors[name] = CheckpointTensor(name, info.shape, str(gguf.path), read, info.type_name)
    return tensors
