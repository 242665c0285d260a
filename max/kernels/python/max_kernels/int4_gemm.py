"""The int4 weight-only product on the tensor cores: y = x @ W.T + b for x [M, K] in 16 bits
and W in our int4 layout (`max_kernels.int4_layout`).

Each program owns a BLOCK_M x BLOCK_N tile of y. Per slice of BLOCK_K input features it
loads the packed bytes [BLOCK_N, BLOCK_K / 2], splits them into the even and odd columns'
codes, dequantizes each half with its groups' scales and zeros into x's dtype and runs two
`tl.dot`s against x's even and odd columns, so no nibble interleaving is needed in
registers. Used for prefill and large batches (`int4_gemm`), and with a 16-row tile that
reads the weight once for 2 to 16 rows (`int4_gemv` calls it for batched decode).

With `factored=True` (K slices no longer than a group) the slice's codes are not
dequantized at all: each nibble becomes B + q in x's dtype with two integer instructions
(OR-ed into the bits of B = 128 in bfloat16, 1024 in float16: exact), the tensor cores
sum (B + q) x exactly in float32, and the group's scale and zero come after the dot,
s (sum (B + q) x - (B + z) sum x), once per output and slice instead of once per code.

`int4_linear_reference` (dequantize, then `F.linear`) defines the result; the kernel
accumulates in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.int4_layout import check_int4_layout

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806


def int4_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    block_m: int | None = None,
    block_n: int = 128,
    block_k: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    factored: bool = False,
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype by the Triton tile kernel (factored:
    scales after the dot, for K slices no longer than a group, see the module docstring)."""
    check_int4_layout(qweight, scales, zeros, group_size)
    m, k = x.shape
    n = qweight.shape[0]
    if 2 * qweight.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {2 * qweight.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if block_m is None:
        block_m = 16 if m <= 16 else (64 if m <= 512 else 128)
    sub = sub_block(group_size, block_k)
    if factored and sub != block_k:
        raise ValueError(f"the factored tile takes K slices no longer than a group: {block_k} > {group_size}")
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int4_gemm_kernel[grid](
        x, qweight, scales, zeros, bias if bias is not None else scales, y,
        m, n, k, group_size, k // group_size, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SUB=sub,
        CODE_BIAS=(_CODE_BIAS.get(x.dtype, 0) if factored else -1),
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y


# B of the factored tile: B + q is exact in x's dtype and its bits are B's with q OR-ed into
# the low mantissa bits (float32 converts the code instead: B = 0).
_CODE_BIAS = {torch.bfloat16: 128, torch.float16: 1024}


def sub_block(group_size: int, block_k: int) -> int:
    """Columns of a K slice that share one scale: the group, or the whole slice when the
    group is longer. One of the two must divide the other (groups of 32 to 128, or a whole
    row, against slices of 64 to 1024)."""
    if block_k % group_size == 0:
        return group_size
    if group_size % block_k == 0:
        return block_k
    raise ValueError(f"a K slice of {block_k} and groups of {group_size}: neither divides the other")


@triton.jit
def dequantize_half(codes, s_ptr, z_ptr, rn, n_ok, start, k, group, n_groups,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """float32 [BLOCK_N, BLOCK_K / 2]: one nibble of each byte of a K slice (the even or
    the odd columns), (code - zero) * scale with each sub-block's group."""
    NSUB: tl.constexpr = BLOCK_K // SUB
    HALF: tl.constexpr = SUB // 2
    cols = start + tl.arange(0, NSUB) * SUB
    g_ok = n_ok[:, None] & (cols < k)[None, :]
    at = rn[:, None].to(tl.int64) * n_groups + (cols // group)[None, :]
    s = tl.load(s_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
    c = tl.reshape(codes.to(tl.float32), (BLOCK_N, NSUB, HALF))
    w = (c - z[:, :, None]) * s[:, :, None]
    return tl.reshape(w, (BLOCK_N, BLOCK_K // 2))


@triton.jit
def _biased_codes(codes, CODE_BIAS: tl.constexpr):
    """CODE_BIAS + q for codes q in [0, 15], in the dtype that CODE_BIAS is exact in (its bits
    with q in the lowest mantissa bits: 128 in bfloat16, 1024 in float16; 0: float32 q)."""
    if CODE_BIAS == 128:
        biased = (codes.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
    elif CODE_BIAS == 1024:
        biased = (codes.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)
    else:
        biased = codes.to(tl.float32)
    return biased


@triton.jit
def _factored_slice(acc, b, x_even, x_odd, s_ptr, z_ptr, rn, n_ok, start, group, n_groups,
                    IEEE: tl.constexpr, CODE_BIAS: tl.constexpr):  # fmt: skip
    """acc + one K slice (inside one group) with its scale and zero applied after the dot:
    s (sum (B + q) x - (B + z) sum x)."""
    c_even = tl.trans(_biased_codes(b & 15, CODE_BIAS))
    c_odd = tl.trans(_biased_codes(b >> 4, CODE_BIAS))
    if IEEE:
        part = tl.dot(x_even, c_even, input_precision="ieee")
        part = tl.dot(x_odd, c_odd, part, input_precision="ieee")
    else:
        part = tl.dot(x_even, c_even)
        part = tl.dot(x_odd, c_odd, part)
    x_sum = tl.sum(x_even.to(tl.float32) + x_odd.to(tl.float32), axis=1)
    at = rn.to(tl.int64) * n_groups + start // group
    s = tl.load(s_ptr + at, mask=n_ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + at, mask=n_ok, other=0.0).to(tl.float32) + CODE_BIAS
    return acc + s[None, :] * (part - z[None, :] * x_sum[:, None])


@triton.jit
def _int4_gemm_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, m, n, k, group, n_groups, sx, sy,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, SUB: tl.constexpr, CODE_BIAS: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n
    k2 = k // 2
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rj = start // 2 + tl.arange(0, BLOCK_K // 2)
        j_ok = rj < k2
        b = tl.load(q_ptr + rn[:, None].to(tl.int64) * k2 + rj[None, :], mask=n_ok[:, None] & j_ok[None, :], other=0)
        x_at = x_ptr + rm[:, None].to(tl.int64) * sx + 2 * rj[None, :]
        x_mask = m_ok[:, None] & j_ok[None, :]
        x_even = tl.load(x_at, mask=x_mask, other=0.0)
        x_odd = tl.load(x_at + 1, mask=x_mask, other=0.0)
        if CODE_BIAS >= 0:
            acc = _factored_slice(acc, b, x_even, x_odd, s_ptr, z_ptr, rn, n_ok, start, group, n_groups,
                                  IEEE, CODE_BIAS)  # fmt: skip
        else:
            w_even = dequantize_half(b & 15, s_ptr, z_ptr, rn, n_ok, start, k, group, n_groups, BLOCK_N, BLOCK_K, SUB)
            w_odd = dequantize_half(b >> 4, s_ptr, z_ptr, rn, n_ok, start, k, group, n_groups, BLOCK_N, BLOCK_K, SUB)
            # Dequantized values rounded once to x's dtype, as the reference's weight is; the
            # tensor cores sum in float32 (float32 inputs as float32, not tf32).
            w_even = tl.trans(w_even.to(x_even.dtype))
            w_odd = tl.trans(w_odd.to(x_even.dtype))
            if IEEE:
                acc = tl.dot(x_even, w_even, acc, input_precision="ieee")
                acc = tl.dot(x_odd, w_odd, acc, input_precision="ieee")
            else:
                acc = tl.dot(x_even, w_even, acc)
                acc = tl.dot(x_odd, w_odd, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm[:, None].to(tl.int64) * sy + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
