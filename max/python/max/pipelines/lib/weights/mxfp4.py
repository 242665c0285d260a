"""MXFP4 tensors (OCP microscaling FP4), as gpt-oss checkpoints store their experts' weights.

A weight W [..., rows, cols] is stored as two tensors:
- `<name>_blocks`, uint8 [..., rows, cols / 32, 16]: 32 FP4 (E2M1) values per block, two
  per byte, the low nibble first;
- `<name>_scales`, uint8 [..., rows, cols / 32]: one power-of-two scale per block (E8M0,
  biased by 127).
Element j of a block is FP4_VALUES[nibble j] * 2 ** (scale - 127). The values are exact in
float32, so decoding in float32 (`max_kernels.mxfp4_moe.decode_mxfp4`, the kernels' own
reference) and rounding once to the compute dtype gives what transformers' own decoder
(`integrations.mxfp4.convert_moe_packed_tensors`) computes in that dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max_kernels.mxfp4_moe import FP4_VALUES, decode_mxfp4

__all__ = ["BLOCKS_SUFFIX", "FP4_VALUES", "SCALES_SUFFIX", "decode_mxfp4", "decode_mxfp4_pairs", "mxfp4_tensor"]

BLOCKS_SUFFIX = "_blocks"
SCALES_SUFFIX = "_scales"


def mxfp4_tensor(name: str, blocks: CheckpointTensor, scales: CheckpointTensor) -> CheckpointTensor:
    """The decoded weight `name` of a blocks/scales pair, read lazily (slices along any
    dimension but the last decode only their own blocks)."""
    if len(blocks.shape) < 2 or tuple(blocks.shape[:-1]) != tuple(scales.shape) or blocks.shape[-1] != 16:
        raise MaxError(
            f"{blocks.source}: MXFP4 tensors {blocks.name!r} {tuple(blocks.shape)} and {scales.name!r} "
            f"{tuple(scales.shape)} do not pair up (expected blocks [..., n, 16] and scales [..., n])"
        )
    shape = (*blocks.shape[:-2], blocks.shape[-2] * 32)

    def read(dtype: torch.dtype) -> torch.Tensor:
        return decode_mxfp4(blocks.load(torch.uint8), scales.load(torch.uint8)).to(dtype)

    def read_slice(dtype: torch.dtype, dim: int, start: int, stop: int) -> torch.Tensor:
        if dim >= len(shape) - 1:
            return read(dtype).narrow(dim, start, stop - start)
        part_blocks = blocks.load_slice(torch.uint8, dim, start, stop)
        part_scales = scales.load_slice(torch.uint8, dim, start, stop)
        return decode_mxfp4(part_blocks, part_scales).to(dtype)

    return CheckpointTensor(name, shape, blocks.source, read, encoding="mxfp4", read_slice=read_slice)


def decode_mxfp4_pairs(checkpoint: Checkpoint) -> Mapping[str, CheckpointTensor]:
    """The checkpoint with every `<name>_blocks` / `<name>_scales` pair replaced by the
    decoded tensor `<name>` (other tensors unchanged)."""
    out: dict[str, CheckpointTensor] = {}
    for name, tensor in checkpoint.items():
        if name.endswith(SCALES_SUFFIX) and name.removesuffix(SCALES_SUFFIX) + BLOCKS_SUFFIX in checkpoint:
            continue  # read with its blocks
        if not name.endswith(BLOCKS_SUFFIX):
            out[name] = tensor
            continue
        base = name.removesuffix(BLOCKS_SUFFIX)
        scales = checkpoint.get(base + SCALES_SUFFIX)
        if scales is None:
            raise MaxError(f"{tensor.source}: MXFP4 tensor {name!r} has no {base + SCALES_SUFFIX!r} beside it")
        out[base] = mxfp4_tensor(base, tensor, scales)
    return out
