"""MXFP4 expert weights decoded to bfloat16/float16 in one pass, for steps with many tokens.

The tensor-core path of `mxfp4_moe` decodes each weight tile in registers before its
`tl.dot`, once per block of BLOCK_M routed rows. In a prefill step of thousands of tokens
every expert has hundreds of rows, so each weight is decoded many times over, and the
CUDA-core work of decoding (about a dozen integer operations a weight) outweighs the
tensor-core work it feeds. Decoding every expert once into a scratch buffer and running
the bfloat16 grouped GEMMs of `mixture_of_experts` on it costs one read of the packed
weights and one write and read of the decoded ones per layer, which is small beside such a
step's matrix products. Decode steps (few rows per expert) keep the fused path, where the
weights' bytes are what counts.

`decode_mxfp4_rows` writes what `mxfp4_moe.decode_mxfp4` computes, rounded once to the
output dtype (every decoded value is exact in bfloat16 and float16 for the scales gpt-oss
uses), optionally with gpt-oss's interleaved gate/up rows (2j gate, 2j + 1 up) split into
[gate; up] as `fused_moe` takes them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803


@triton.jit
def _scale_factor(scales):
    """float32 2 ** (scale - 113) of E8M0 scales (any integer dtype), built as float32 bits:
    the block's 2 ** (scale - 127) times the 2 ** 14 that `_decode_codes` leaves out."""
    return ((scales.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _decode_codes(packed):
    """(low, high) float32 values times 2 ** -14 of the two E2M1 codes in each byte of
    `packed` (uint8): the sign goes to a float16's bit 15 and the three exponent/mantissa
    bits to bits 9-11, the top of the mantissa and the bottom of the exponent, so that code
    e m reads as 2 ** (e - 15) * (1 + m / 2), or m * 2 ** -15 (a subnormal) for e = 0."""
    b = packed.to(tl.uint16)
    lo = ((b & 0x7) << 9) | ((b & 0x8) << 12)
    hi = ((b & 0x70) << 5) | ((b & 0x80) << 8)
    return (
        lo.to(tl.float16, bitcast=True).to(tl.float32),
        hi.to(tl.float16, bitcast=True).to(tl.float32),
    )


@triton.jit
def _decode_rows_kernel(
    blocks_ptr,
    scales_ptr,
    out_ptr,
    R,
    G,
    stride_be,
    stride_br,
    stride_se,
    stride_sr,
    stride_oe,
    stride_or,
    DEINTERLEAVE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, 16)
    ok = (rows < R)[:, None] & (groups < G)[None, :]
    rows64 = rows.to(tl.int64)
    packed = tl.load(
        blocks_ptr
        + e * stride_be
        + rows64[:, None, None] * stride_br
        + groups[None, :, None] * 16
        + offs_j[None, None, :],
        mask=ok[:, :, None],
        other=0,
    )
    scale = tl.load(scales_ptr + e * stride_se + rows64[:, None] * stride_sr + groups[None, :], mask=ok, other=0)
    lo, hi = _decode_codes(packed)
    sf = _scale_factor(scale)[:, :, None]
    # Element 2j of a block is byte j's low nibble, 2j + 1 its high one.
    values = tl.reshape(tl.join(lo * sf, hi * sf), (BLOCK_R, BLOCK_G * 32))
    if DEINTERLEAVE:
        out_rows = rows64 // 2 + (rows64 % 2) * (R // 2)
    else:
        out_rows = rows64
    cols = pid_g * (BLOCK_G * 32) + tl.arange(0, BLOCK_G * 32)
    out = out_ptr + e * stride_oe + out_rows[:, None] * stride_or + cols[None, :]
    col_ok = (cols < G * 32)[None, :] & (rows < R)[:, None]
    tl.store(out, values.to(out_ptr.dtype.element_ty), mask=col_ok)


def decode_mxfp4_rows(
    blocks: torch.Tensor,
    scales: torch.Tensor,
    dtype: torch.dtype,
    *,
    deinterleave: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """[E, R, G * 32] in `dtype` from MXFP4 blocks [E, R, G, 16] and scales [E, R, G].

    With `deinterleave`, row 2j of each expert goes to row j and row 2j + 1 to row R/2 + j
    (gpt-oss's gate/up rows into [gate; up]). Each row's blocks must be contiguous (any
    strides on E and R). `out`, if given, is written and returned (a reused scratch).
    """
    if blocks.dim() != 4 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    if deinterleave and blocks.shape[1] % 2:
        raise ValueError(f"cannot de-interleave {blocks.shape[1]} rows (an odd count)")
    num_experts, rows, groups, _ = blocks.shape
    if blocks.stride(-1) != 1 or blocks.stride(-2) != 16:
        blocks = blocks.contiguous()
    if scales.stride(-1) != 1:
        scales = scales.contiguous()
    if out is None:
        out = torch.empty(num_experts, rows, groups * 32, dtype=dtype, device=blocks.device)
    elif tuple(out.shape) != (num_experts, rows, groups * 32) or out.dtype != dtype or out.stride(-1) != 1:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} does not fit [{num_experts}, {rows}, {groups * 32}] {dtype}")
    block_r, block_g = 32, 4
    grid = (triton.cdiv(rows, block_r), triton.cdiv(groups, block_g), num_experts)
    _decode_rows_kernel[grid](
        blocks, scales, out, rows, groups,
        blocks.stride(0), blocks.stride(1), scales.stride(0), scales.stride(1), out.stride(0), out.stride(1),
        DEINTERLEAVE=deinterleave, BLOCK_R=block_r, BLOCK_G=block_g, num_warps=4,
    )  # fmt: skip
    return out
