"""The int4 weight-only product on the tensor cores with the codes read as 32-bit words:
y = x @ W.T + b for x [M, K] in bfloat16 or float16 (a decode step of 2 to 16 rows, or
more) and W in our int4 layout (`max_kernels.int4_layout`).

Word j of a weight row holds the codes of columns 8j .. 8j + 7, nibble p at bits 4p. One
AND with 0x000F000F (after a shift by 4p) keeps nibbles p and p + 4 in the low bits of the
word's two halves, and an OR with the bits of B in both halves (B = 128 in bfloat16, 1024
in float16) makes them the two 16-bit numbers B + q, exactly: two integer instructions per
two codes, no conversion. The tensor cores multiply them with x's matching columns (each
K slice's columns visited in the order the words give them, x gathered the same way; a
sum does not care) and add in float32, exactly; the slice's group scale and zero come
after the dot,

    sum_k (q - z) s x = s (sum_k (B + q) x - (B + z) sum_k x)     (one group per slice).

`int4_linear_reference` defines the result (the kernel keeps the products exact and sums
in float32, so it is closer to the float32 product than the reference's 16-bit weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.grid_counters import counters
from max_kernels.int4_layout import check_int4_layout
from max_kernels.int4_word_gemv import finish_split_k
from max_kernels.pdl import pdl_launch, pdl_prologue

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803

# B and its bits in both halves of a word, per x dtype.
_BIAS = {torch.bfloat16: (128, 0x43004300), torch.float16: (1024, 0x64006400)}


def int4_word_tile(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    block_m: int = 16,
    block_n: int = 64,
    block_k: int = 128,
    num_warps: int = 4,
    num_stages: int = 3,
    split_k: int = 1,
) -> torch.Tensor:
    """x [M, K] (bfloat16 / float16) @ W.T (+ bias) -> [M, N]; K slices of block_k (a power
    of two from 64, inside one group) per loop step; K split over split_k programs per tile
    (the last to finish adds the parts: one launch), for short products on many SMs."""
    check_int4_layout(qweight, scales, zeros, group_size)
    m, k = x.shape
    n = qweight.shape[0]
    if x.dtype not in _BIAS:
        raise ValueError(f"int4_word_tile takes bfloat16 or float16 x, got {x.dtype}")
    if 2 * qweight.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {2 * qweight.shape[1]}")
    if block_k < 64 or block_k & (block_k - 1) or group_size % block_k:
        raise ValueError(f"K slices of {block_k} must be a power of two from 64 inside groups of {group_size}")
    if k % 8 or not qweight.is_contiguous() or qweight.data_ptr() % 4:
        raise ValueError("int4_word_tile reads the codes as int32 words: K % 8 == 0, contiguous, aligned")
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    code_bias, magic = _BIAS[x.dtype]
    k8, words = k // 8, block_k // 8
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    slices = triton.cdiv(k8, words)
    split_k = max(1, min(split_k, slices))
    cnt = counters(x.device, tiles) if split_k > 1 else None
    if cnt is None:
        split_k = 1
    per_split = triton.cdiv(slices, split_k) * words  # whole slices: splits start on groups
    split_k = triton.cdiv(k8, per_split)
    parts = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device) if split_k > 1 else y
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _int4_word_tile_kernel[grid](
        x, qweight.view(torch.int32), scales, zeros, bias if bias is not None else scales, y, parts,
        cnt if cnt is not None else y, m, n, k8, k // group_size, x.stride(0), per_split,
        GROUP=group_size, HAS_BIAS=bias is not None, CODE_BIAS=code_bias, MAGIC=magic,
        BLOCK_M=block_m, BLOCK_N=block_n, WORDS=words, SPLIT_K=split_k,
        num_warps=num_warps, num_stages=num_stages, **pdl_launch(x),
    )  # fmt: skip
    return y


@triton.jit
def _biased_pairs(words, P: tl.constexpr, MAGIC: tl.constexpr, DTYPE: tl.constexpr):
    """[BLOCK_N, 2 WORDS] of B + q in DTYPE: for word j, nibble P (column 8j + P) at 2j and
    nibble P + 4 (column 8j + P + 4) at 2j + 1."""
    t = ((words >> (4 * P)) & 0x000F000F) | MAGIC
    pair = tl.join(t.to(tl.int16), (t >> 16).to(tl.int16))
    return tl.reshape(pair, (words.shape[0], 2 * words.shape[1])).to(DTYPE, bitcast=True)


@triton.jit
def _int4_word_tile_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr, m, n, k8, n_groups, sx, per_split,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, CODE_BIAS: tl.constexpr, MAGIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WORDS: tl.constexpr, SPLIT_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)  # (PDL: the next kernel launches now; wait for x's producer)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n
    rows = w_ptr + rn[:, None].to(tl.int64) * k8
    x_rows = x_ptr + rm[:, None].to(tl.int64) * sx
    # Column of x that k' = 2j + h of a nibble position's operand multiplies: 8j + 4h (+ P).
    kk = tl.arange(0, 2 * WORDS)
    x_cols = 8 * (kk // 2) + 4 * (kk % 2)
    w_lo = pid_k * per_split
    w_hi = tl.minimum(w_lo + per_split, k8)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for w0 in range(w_lo, w_hi, WORDS):
        rj = w0 + tl.arange(0, WORDS)
        words = tl.load(rows + rj[None, :], mask=n_ok[:, None] & (rj < w_hi)[None, :], other=0)
        x_mask = m_ok[:, None] & (w0 + kk // 2 < w_hi)[None, :]
        part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        x_cols_sum = tl.zeros([BLOCK_M, 2 * WORDS], dtype=tl.float32)  # one reduction a slice
        for p in tl.static_range(4):
            xp = tl.load(x_rows + (8 * w0 + p) + x_cols[None, :], mask=x_mask, other=0.0)
            codes = _biased_pairs(words, p, MAGIC, xp.dtype)
            part = tl.dot(xp, tl.trans(codes), part)
            x_cols_sum += xp.to(tl.float32)
        x_sum = tl.sum(x_cols_sum, axis=1)
        at = rn.to(tl.int64) * n_groups + (8 * w0) // GROUP
        s = tl.load(s_ptr + at, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + at, mask=n_ok, other=0.0).to(tl.float32) + CODE_BIAS
        acc += s[None, :] * (part - z[None, :] * x_sum[:, None])
    out = rm[:, None] * n + rn[None, :]
    counter = cnt_ptr + pid_m * tl.num_programs(1) + pid_n
    finish_split_k(acc, part_ptr, counter, b_ptr, y_ptr, pid_k, m * n, rn, n_ok, out,
                   m_ok[:, None] & n_ok[None, :], HAS_BIAS, SPLIT_K)  # fmt: skip
