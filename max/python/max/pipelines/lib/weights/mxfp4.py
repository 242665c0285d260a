"""MXFP4 tensors (OCP microscaling FP4), as gpt-oss checkpoints store their experts' weights.

A weight W [..., rows, cols] is stored as two tensors:
- `<name>_blocks`, uint8 [..., rows, cols / 32, 16]: 32 FP4 (E2M1) values per block, two
  per byte, the low nibble first;
- `<name>_scales`, uint8 [..., rows, cols / 32]: one power-of-two scale per block (E8M0,
  biased by 127).
Element j of a block is FP4_VALUES[nibble j] * 2 ** (scale - 127). The values are exact in
float32, so decoding in float32 and rounding once to the compute dtype gives what
transformers' own decoder (`integrations.mxfp4.convert_moe_packed_tensors`) computes in
that dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor

# The 16 E2M1 values, by 4-bit code (bit 3 is the sign).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCKS_SUFFIX = "_blocks"
SCALES_SUFFIX = "_scales"
_SCALE_BIAS = 127


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [..., rows, groups * 32] from uint8 blocks [..., rows, groups, 16] and scales
    [..., rows, groups]."""
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = blocks.to(torch.uint8)
    # Element 2j of a block is byte j's low nibble, element 2j + 1 its high nibble.
    values = torch.stack((lut[(codes & 0x0F).long()], lut[(codes >> 4).long()]), dim=-1)
    values = values.flatten(-2)  # [..., rows, groups, 32]
    exponents = scales.to(torch.int32) - _SCALE_BIAS
    return torch.ldexp(values, exponents[..., None]).flatten(-2)


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
