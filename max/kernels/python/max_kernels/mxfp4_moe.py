"""Routed experts whose weights stay packed in MXFP4 on the device (gpt-oss), decoded in the kernels.

The format (OCP microscaling FP4, as gpt-oss checkpoints store their experts): a weight
W [rows, cols] is two uint8 tensors,
- `blocks` [rows, cols / 32, 16]: 32 E2M1 codes per block, two per byte, the low nibble
  first (element 2j of a block is byte j's low nibble, element 2j + 1 its high nibble);
- `scales` [rows, cols / 32]: one E8M0 exponent per block, biased by 127;
and W[r, 32 g + i] = FP4_VALUES[code i of block (r, g)] * 2 ** (scales[r, g] - 127).
A code is s e e m (bit 3 the sign): 0, 0.5 (subnormal) and 2 ** (e - 1) * (1 + m / 2).

`fused_moe_mxfp4` computes what `mixture_of_experts.fused_moe_reference` computes on the
decoded weights (decoded in float32, rounded once to x's dtype, as the bfloat16 load path
does), with gpt-oss's layout of the gate and up projections: their rows are interleaved,
row 2j the gate of feature j and row 2j + 1 its up (a tensor-parallel rank's features
[i0, i1) are then the contiguous rows [2 i0, 2 i1)). A decoded value is a 2-bit
significand times a power of two, exact in bfloat16 and float32, so the kernels multiply
the same numbers as the decoded path and differ from it only in the order of their
float32 sums. gpt-oss-20b's experts (24 layers of 32) take 10.2 GB packed (blocks and
scales, 13.2 MB an expert) against 38.2 GB decoded to bfloat16.

Three Triton paths; the first two are each two kernels (gate/up with the activation in
its epilogue, then down times the router weight):
- few tokens (decode steps, up to `GEMV_MAX_TOKENS`): CUDA-core GEMVs per (token, slot)
  pair with no alignment step, the sum over the k slots done by the down launch itself;
  in `mxfp4_gemv`;
- more tokens (prefill): the grouped GEMMs of `mixture_of_experts` (its alignment of the
  pairs by expert, padded to BLOCK_M rows) on the tensor cores, each [BLOCK_K, BLOCK_N]
  weight tile decoded to x's dtype in registers before `tl.dot`, then a sum over the k
  slots; here;
- many tokens (from `DEQUANT_MIN_TOKENS`, large prefill steps): every expert decoded once
  into a bfloat16 scratch (`mxfp4_dequant`) and the bfloat16 grouped GEMMs of
  `mixture_of_experts` run on it, so no weight is decoded once per block of rows.

The decode is arithmetic, with no table: a code's three magnitude bits shifted into a
float16's exponent and mantissa give the value times 2 ** -14 (the subnormal 0.5 becomes
a float16 subnormal, which the conversion to float32 keeps exact), and the block's scale,
built as float32 bits, supplies 2 ** (scale - 113); both paths decode so.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting
from max_kernels.mixture_of_experts import (
    MoeBlocks,
    _align,
    _fused_moe,
    _gated_mlp,
    _mma,
    _sum_routed_experts,
)
from max_kernels.moe_activation import (
    SWIGLU_ALPHA,
    SWIGLU_LIMIT,
    _gated_activation,
    _weighted_output,
    activation_fn,
    check_activation,
)
from max_kernels.mxfp4_dequant import _decode_codes, _scale_factor, decode_mxfp4_rows
from max_kernels.mxfp4_gemv import GEMV_MAX_TOKENS, GemvBlocks, launch_gemv, pick_gemv_blocks
from max_kernels.pdl import pdl_launch, pdl_prologue

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

# From this many tokens a step decodes every expert once and runs the bfloat16 grouped
# GEMMs (the "dequant" path) with DEQUANT_BLOCKS; below it the tensor-core kernels decode
# tiles in registers. `mxfp4_moe_bench --large`, one H100, gpt-oss-20b's layer: at 1024
# tokens the tensor-core path takes 1333 us against 1585, at 2048 2165 against 1956, at
# 8192 8322 against 5135 (318 TFLOP/s, as bfloat16 `fused_moe` on weights decoded
# beforehand).
DEQUANT_MIN_TOKENS = 2048
DEQUANT_BLOCKS = MoeBlocks(128, 64, 128, 64, num_warps=8, num_stages=3)

# The 16 E2M1 values, by 4-bit code (bit 3 is the sign).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127
# Weights per MXFP4 block (one scale), and bytes per block.
BLOCK_SIZE = 32
BLOCK_BYTES = 16


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [..., rows, groups * 32] from uint8 blocks [..., rows, groups, 16] and scales
    [..., rows, groups] (exact: every decoded value is representable in float32)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK_BYTES:
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)} "
            "(expected blocks [..., n, 16] and scales [..., n])"
        )
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = blocks.to(torch.uint8)
    values = torch.stack((lut[(codes & 0x0F).long()], lut[(codes >> 4).long()]), dim=-1)
    values = values.flatten(-2)  # [..., rows, groups, 32]
    exponents = scales.to(torch.int32) - SCALE_BIAS
    return torch.ldexp(values, exponents[..., None]).flatten(-2)


def _expert_shapes(gate_up_blocks, gate_up_scales, down_blocks, down_scales) -> tuple[int, int, int]:
    """(experts, hidden, intermediate) of the packed expert weights; raises on a mismatch."""
    if gate_up_blocks.dim() != 4 or down_blocks.dim() != 4:
        raise ValueError(
            f"MXFP4 expert blocks must be [E, rows, groups, 16], got gate_up "
            f"{tuple(gate_up_blocks.shape)} and down {tuple(down_blocks.shape)}"
        )
    for name, blocks, scales in (
        ("gate_up", gate_up_blocks, gate_up_scales),
        ("down", down_blocks, down_scales),
    ):
        if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise ValueError(f"MXFP4 {name} blocks and scales must be uint8")
        if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK_BYTES:
            raise ValueError(
                f"MXFP4 {name} blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}"
            )
    num_experts, two_i, h_groups, _ = gate_up_blocks.shape
    hidden, inter = h_groups * BLOCK_SIZE, two_i // 2
    expected_down = (num_experts, hidden, inter // BLOCK_SIZE, BLOCK_BYTES)
    if two_i % 2 or inter % BLOCK_SIZE or tuple(down_blocks.shape) != expected_down:
        raise ValueError(
            f"MXFP4 down blocks {tuple(down_blocks.shape)} do not fit gate_up blocks "
            f"{tuple(gate_up_blocks.shape)} (expected {expected_down}; the intermediate size "
            "must be a multiple of 32)"
        )
    return num_experts, hidden, inter


def fused_moe_mxfp4_reference(
    x: torch.Tensor,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = SWIGLU_ALPHA,
    limit: float = SWIGLU_LIMIT,
) -> torch.Tensor:
    """`fused_moe_mxfp4` in torch (the CPU path): decodes one used expert at a time.

    Bit for bit `fused_moe_reference(x, W_gate_up, W_down, ...)` on the decoded weights:
    each used expert's packed weights are decoded in float32 and rounded to x's dtype,
    its interleaved gate/up rows split into gate (even rows) and up (odd rows), and its
    MLP and weighted sum computed by the same code as `fused_moe_reference`. Memory beyond
    the packed weights is one expert's decoded weights (float32), never all of them.
    Arguments as `fused_moe_mxfp4`.
    """
    act = activation_fn(activation, alpha, limit)
    num_experts, _, _ = _expert_shapes(gate_up_blocks, gate_up_scales, down_blocks, down_scales)

    def expert_mlp(e: int, xe: torch.Tensor) -> torch.Tensor:
        w = decode_mxfp4(gate_up_blocks[e], gate_up_scales[e]).to(x.dtype)
        w_down = decode_mxfp4(down_blocks[e], down_scales[e]).to(x.dtype)
        bg = bu = bd = None
        if b_gate_up is not None:
            bg, bu = b_gate_up[e, 0::2].contiguous(), b_gate_up[e, 1::2].contiguous()
        if b_down is not None:
            bd = b_down[e]
        # Contiguous, as the de-interleaved [gate; up] weight's halves are.
        w_gate, w_up = w[0::2].contiguous(), w[1::2].contiguous()
        return _gated_mlp(xe, w_gate, w_up, w_down, bg, bu, bd, act)

    return _sum_routed_experts(x, topk_weights, topk_ids, num_experts, expert_mlp)


# ----------------------------------------------------------------------------- Triton


@triton.jit
def _decoded_tile(packed, scale, K_HALF: tl.constexpr, N: tl.constexpr, DT: tl.constexpr):
    """(even-K, odd-K) weight tiles [K_HALF = G * 16, N] in DT from packed [G, 16, N] and
    scales [G, N]: exact values, rounded once to DT as the reference rounds them."""
    lo, hi = _decode_codes(packed)
    sf = _scale_factor(scale)[:, None, :]
    lo = tl.reshape(lo * sf, (K_HALF, N)).to(DT)
    hi = tl.reshape(hi * sf, (K_HALF, N)).to(DT)
    return lo, hi


@triton.jit
def _mma_gate_up_kernel(
    x_ptr,
    wb_ptr,
    ws_ptr,
    b_ptr,
    h_ptr,
    pairs_ptr,
    block_expert_ptr,
    num_pairs,
    top_k,
    H,
    I,  # noqa: E741
    E,
    stride_xt,
    stride_wbe,
    stride_wbr,
    stride_wse,
    stride_wsr,
    stride_be,
    stride_ht,
    alpha,
    limit,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pdl_prologue(USE_PDL)
    expert = tl.load(block_expert_ptr + pid_m)
    active = expert < E
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    token = (pair // top_k).to(tl.int64)
    e64 = tl.where(active, expert, 0).to(tl.int64)
    # Weight rows 2n, 2n + 1 of the slice's features, as the N dimension of the B tile;
    # the tile's K dimension is (block g, byte j): the low nibbles multiply x's even
    # columns, the high nibbles its odd ones.
    rows = pid_n * (2 * BLOCK_N) + tl.arange(0, 2 * BLOCK_N)
    r_ok = rows < 2 * I
    offs_g = tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, 16)
    wb = (
        wb_ptr
        + e64 * stride_wbe
        + rows.to(tl.int64)[None, None, :] * stride_wbr
        + offs_g[:, None, None] * 16
        + offs_j[None, :, None]
    )
    ws = ws_ptr + e64 * stride_wse + rows.to(tl.int64)[None, :] * stride_wsr + offs_g[:, None]
    offs_k = tl.arange(0, BLOCK_G * 32)
    xp = x_ptr + token[:, None] * stride_xt + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], dtype=tl.float32)
    num_groups = H // 32
    # Idle blocks (past the last expert group) run no K iterations.
    g_end = tl.where(active, num_groups, 0)
    for g0 in range(0, g_end, BLOCK_G):
        g_ok = offs_g < num_groups - g0
        a = tl.load(xp + g0 * 32, mask=row_ok[:, None] & (offs_k < (num_groups - g0) * 32)[None, :], other=0.0)
        a_even, a_odd = tl.split(tl.reshape(a, (BLOCK_M, BLOCK_G * 16, 2)))
        packed = tl.load(wb + g0 * 16, mask=g_ok[:, None, None] & r_ok[None, None, :], other=0)
        scale = tl.load(ws + g0, mask=g_ok[:, None] & r_ok[None, :], other=0)
        w_even, w_odd = _decoded_tile(packed, scale, BLOCK_G * 16, 2 * BLOCK_N, x_ptr.dtype.element_ty)
        acc = _mma(acc, a_even, w_even, DOT_F32)
        acc = _mma(acc, a_odd, w_odd, DOT_F32)

    if HAS_BIAS:
        # Idle blocks read no bias: their row bound is 0.
        b_ok = rows < tl.where(active, 2 * I, 0)
        acc += tl.load(b_ptr + e64 * stride_be + rows, mask=b_ok, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    h = _gated_activation(gate, up, h_ptr.dtype.element_ty, ACT, alpha, limit)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    h_ptrs = h_ptr + pair.to(tl.int64)[:, None] * stride_ht + offs_n[None, :]
    tl.store(h_ptrs, h, mask=row_ok[:, None] & (offs_n < I)[None, :])


@triton.jit
def _mma_down_kernel(
    h_ptr,
    wb_ptr,
    ws_ptr,
    b_ptr,
    weights_ptr,
    y_ptr,
    pairs_ptr,
    block_expert_ptr,
    num_pairs,
    H,
    I,  # noqa: E741
    E,
    stride_ht,
    stride_wbe,
    stride_wbr,
    stride_wse,
    stride_wsr,
    stride_be,
    stride_yt,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pdl_prologue(USE_PDL)
    expert = tl.load(block_expert_ptr + pid_m)
    active = expert < E
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    pair64 = pair.to(tl.int64)
    e64 = tl.where(active, expert, 0).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < H
    offs_g = tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, 16)
    wb = (
        wb_ptr
        + e64 * stride_wbe
        + rows.to(tl.int64)[None, None, :] * stride_wbr
        + offs_g[:, None, None] * 16
        + offs_j[None, :, None]
    )
    ws = ws_ptr + e64 * stride_wse + rows.to(tl.int64)[None, :] * stride_wsr + offs_g[:, None]
    offs_k = tl.arange(0, BLOCK_G * 32)
    ap = h_ptr + pair64[:, None] * stride_ht + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    num_groups = I // 32
    g_end = tl.where(active, num_groups, 0)
    for g0 in range(0, g_end, BLOCK_G):
        g_ok = offs_g < num_groups - g0
        a = tl.load(ap + g0 * 32, mask=row_ok[:, None] & (offs_k < (num_groups - g0) * 32)[None, :], other=0.0)
        a_even, a_odd = tl.split(tl.reshape(a, (BLOCK_M, BLOCK_G * 16, 2)))
        packed = tl.load(wb + g0 * 16, mask=g_ok[:, None, None] & r_ok[None, None, :], other=0)
        scale = tl.load(ws + g0, mask=g_ok[:, None] & r_ok[None, :], other=0)
        w_even, w_odd = _decoded_tile(packed, scale, BLOCK_G * 16, BLOCK_N, h_ptr.dtype.element_ty)
        acc = _mma(acc, a_even, w_even, DOT_F32)
        acc = _mma(acc, a_odd, w_odd, DOT_F32)

    if HAS_BIAS:
        b_ok = rows < tl.where(active, H, 0)
        acc += tl.load(b_ptr + e64 * stride_be + rows, mask=b_ok, other=0.0).to(tl.float32)[None, :]
    weight = tl.load(weights_ptr + pair64, mask=row_ok, other=0.0)
    y = _weighted_output(acc, weight[:, None], y_ptr.dtype.element_ty)
    y_ptrs = y_ptr + pair64[:, None] * stride_yt + rows[None, :]
    tl.store(y_ptrs, y, mask=row_ok[:, None] & r_ok[None, :])


# ----------------------------------------------------------------------------- launch


def pick_mma_blocks(num_pairs: int, num_experts: int, dtype: torch.dtype) -> MoeBlocks:
    """Tensor-core tiles for num_pairs (token, slot) pairs over num_experts experts.
    block_n_gate_up counts features (the gate/up tile has twice as many weight rows);
    block_k is in weights, a multiple of 32. From `mxfp4_moe_bench --large` on one H100
    (2026-12-07, gpt-oss-20b's layer): every block of rows decodes its expert's weights
    again, so blocks as tall as the rows an expert gets win (64 rows at 32-64 rows per
    expert: 625 against 708 us at 256 tokens, 871 against 1138 at 512; 128 rows above);
    narrow N tiles (32 features) keep the decoded tiles in registers (64 features with 8
    warps spilled: 2.5-3x slower)."""
    if dtype == torch.float32:  # IEEE float32 dots: small tiles (a CPU-side dtype on GPUs)
        return MoeBlocks(16, 16, 32, 64, num_warps=4, num_stages=2)
    rows_per_expert = num_pairs / num_experts
    if rows_per_expert <= 16:
        return MoeBlocks(16, 32, 64, 128, num_warps=4, num_stages=3)
    if rows_per_expert <= 96:
        return MoeBlocks(64, 32, 64, 64, num_warps=4, num_stages=3)
    return MoeBlocks(128, 32, 64, 64, num_warps=8, num_stages=3)


def fused_moe_mxfp4(
    x: torch.Tensor,
    gate_up_blocks: torch.Tensor,
    gate_up_scales: torch.Tensor,
    down_blocks: torch.Tensor,
    down_scales: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = SWIGLU_ALPHA,
    limit: float = SWIGLU_LIMIT,
) -> torch.Tensor:
    """The routed experts' gated MLPs on MXFP4-packed weights, summed by router weight.

    Args:
        x: [T, H] bfloat16, float16 or float32 activations (last dimension contiguous).
        gate_up_blocks: uint8 [E, 2I, H/32, 16], gpt-oss's `gate_up_proj_blocks`: row 2j is
            the gate projection of intermediate feature j, row 2j + 1 its up projection.
            Any strides on the first two dimensions (a tensor-parallel slice of rows
            [2 i0, 2 i1) works as is); each row's [H/32, 16] bytes contiguous.
        gate_up_scales: uint8 [E, 2I, H/32] E8M0 block exponents (bias 127), last dim contiguous.
        down_blocks: uint8 [E, H, I/32, 16] (`down_proj_blocks`), each row's blocks contiguous
            (a slice along I/32 is fine).
        down_scales: uint8 [E, H, I/32].
        topk_weights: [T, k] router weights (rounded to x's dtype, as the reference does).
        topk_ids: int32 or int64 [T, k] experts, distinct within a row, all in [0, E).
        activation: "silu", "gelu_tanh" or "clamped_swiglu" (gpt-oss).
        b_gate_up: optional [E, 2I] bias, interleaved as the rows (gpt-oss's `gate_up_proj_bias`).
        b_down: optional [E, H] bias.
        alpha, limit: "clamped_swiglu"'s sigmoid gain and clamp (gpt-oss: 1.702, 7.0).

    Returns:
        [T, H] in x's dtype: `fused_moe_reference` on the decoded weights (see
        `fused_moe_mxfp4_reference`) up to the order of float32 sums and the final sum over
        the k slots (float32, rounded once). Decoded weights are exact for scales 2..240
        (2 ** -125 .. 2 ** 113); float16 x rounds them to float16 as the reference does.
        H and I must be multiples of 32. No host synchronisation: safe in a CUDA graph.
    """
    tokens = x.shape[0]
    path = "gemv" if tokens <= GEMV_MAX_TOKENS else "mma" if tokens < DEQUANT_MIN_TOKENS else "dequant"
    num_experts = gate_up_blocks.shape[0]
    return _fused_moe_mxfp4(
        x,
        gate_up_blocks,
        gate_up_scales,
        down_blocks,
        down_scales,
        topk_weights,
        topk_ids,
        activation,
        b_gate_up,
        b_down,
        alpha,
        limit,
        path=path,
        gemv_blocks=pick_gemv_blocks(topk_ids.numel()),
        mma_blocks=pick_mma_blocks(topk_ids.numel(), num_experts, x.dtype),
    )


def _contiguous_last(t: torch.Tensor | None, dims: int = 1) -> torch.Tensor | None:
    """t itself when its last `dims` dimensions are laid out densely, else a copy."""
    if t is None:
        return None
    expected = 1
    for d in range(1, dims + 1):
        if t.shape[-d] != 1 and t.stride(-d) != expected:
            return t.contiguous()
        expected *= t.shape[-d]
    return t


def _fused_moe_mxfp4(
    x,
    gate_up_blocks,
    gate_up_scales,
    down_blocks,
    down_scales,
    topk_weights,
    topk_ids,
    activation,
    b_gate_up,
    b_down,
    alpha,
    limit,
    *,
    path: str,
    gemv_blocks: GemvBlocks | None = None,
    mma_blocks: MoeBlocks | None = None,
    sum_slots_in_kernel: bool = True,
):
    """`fused_moe_mxfp4` with its path ("gemv" or "mma") and tiles chosen by the caller
    (None: the defaults for the token count); `sum_slots_in_kernel=False` leaves the GEMV
    path's sum over the k slots to torch (for comparison)."""
    act = check_activation(activation)
    num_experts, hidden, inter = _expert_shapes(gate_up_blocks, gate_up_scales, down_blocks, down_scales)
    num_tokens = x.shape[0]
    if x.dim() != 2 or x.shape[1] != hidden:
        raise ValueError(f"x {tuple(x.shape)} does not match the experts' hidden size {hidden}")
    k = topk_ids.shape[1]
    num_pairs = num_tokens * k
    if num_tokens == 0:
        return torch.empty_like(x)
    x = _contiguous_last(x)
    gate_up_blocks, down_blocks = (_contiguous_last(t, 2) for t in (gate_up_blocks, down_blocks))
    gate_up_scales, down_scales, b_gate_up, b_down = (
        _contiguous_last(t) for t in (gate_up_scales, down_scales, b_gate_up, b_down)
    )
    ids = topk_ids.reshape(-1)
    ids = ids if ids.is_contiguous() else ids.contiguous()
    weights = topk_weights.reshape(-1).contiguous()
    # h: the pairs' activations; y: their weighted expert outputs, summed over k at the end.
    h = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)
    y = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    bgu_stride = b_gate_up.stride(0) if b_gate_up is not None else 0
    bd_stride = b_down.stride(0) if b_down is not None else 0
    pdl = pdl_launch(x)

    if path == "gemv":
        out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=x.device)
        cfg = gemv_blocks or pick_gemv_blocks(num_pairs)
        gate_up, down = (gate_up_blocks, gate_up_scales), (down_blocks, down_scales)
        args = (x, gate_up, down, b_gate_up, b_down, ids, weights, h, y, out, k, act, alpha, limit, cfg)
        if launch_gemv(*args, sum_slots=sum_slots_in_kernel):
            return out
    elif path == "mma":
        blocks = mma_blocks or pick_mma_blocks(num_pairs, num_experts, x.dtype)
        bm = blocks.block_m
        sorted_pairs, block_expert = _align(topk_ids, num_experts, bm)
        num_blocks = block_expert.shape[0]
        dot_f32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreting())
        # tl.dot's operands are at least 16 wide: 8 features (16 interleaved rows), 16 outputs.
        bn1 = max(8, min(blocks.block_n_gate_up, triton.next_power_of_2(inter)))
        bn2 = max(16, min(blocks.block_n_down, triton.next_power_of_2(hidden)))
        bg1 = max(1, min(blocks.block_k // 32, triton.next_power_of_2(hidden // 32)))
        bg2 = max(1, min(blocks.block_k // 32, triton.next_power_of_2(inter // 32)))
        launch = dict(num_warps=blocks.num_warps, num_stages=blocks.num_stages, **pdl)
        _mma_gate_up_kernel[(num_blocks, triton.cdiv(inter, bn1))](
            x, gate_up_blocks, gate_up_scales, b_gate_up if b_gate_up is not None else x, h,
            sorted_pairs, block_expert, num_pairs, k, hidden, inter, num_experts,
            x.stride(0), gate_up_blocks.stride(0), gate_up_blocks.stride(1),
            gate_up_scales.stride(0), gate_up_scales.stride(1), bgu_stride, h.stride(0),
            float(alpha), float(limit), HAS_BIAS=b_gate_up is not None, ACT=act, DOT_F32=dot_f32,
            BLOCK_M=bm, BLOCK_N=bn1, BLOCK_G=bg1, **launch,
        )  # fmt: skip
        _mma_down_kernel[(num_blocks, triton.cdiv(hidden, bn2))](
            h, down_blocks, down_scales, b_down if b_down is not None else x, weights, y,
            sorted_pairs, block_expert, num_pairs, hidden, inter, num_experts,
            h.stride(0), down_blocks.stride(0), down_blocks.stride(1),
            down_scales.stride(0), down_scales.stride(1), bd_stride, y.stride(0),
            HAS_BIAS=b_down is not None, DOT_F32=dot_f32, BLOCK_M=bm, BLOCK_N=bn2, BLOCK_G=bg2, **launch,
        )  # fmt: skip
    elif path == "dequant":
        return _dequantized_moe(
            x, (gate_up_blocks, gate_up_scales), (down_blocks, down_scales), b_gate_up, b_down,
            topk_weights, topk_ids, activation, alpha, limit, mma_blocks,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown path {path!r} (gemv, mma or dequant)")
    return y.view(num_tokens, k, hidden).sum(dim=1)


def _dequantized_moe(x, gate_up, down, b_gate_up, b_down, topk_weights, topk_ids, activation, alpha, limit, blocks):
    """The "dequant" path: every expert decoded to x's dtype ([gate; up] rows, as
    `fused_moe` takes them), then its grouped GEMMs (tiles `blocks`, or its own choice)."""
    w_gate_up = decode_mxfp4_rows(*gate_up, x.dtype, deinterleave=True)
    w_down = decode_mxfp4_rows(*down, x.dtype)
    if b_gate_up is not None:
        b_gate_up = torch.cat((b_gate_up[:, 0::2], b_gate_up[:, 1::2]), dim=1)
    blocks = blocks or DEQUANT_BLOCKS
    return _fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids, activation, b_gate_up, b_down, blocks, alpha, limit)
