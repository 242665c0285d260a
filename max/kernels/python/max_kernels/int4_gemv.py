"""The int4 weight-only product for decode steps (1 to 16 rows): y = x @ W.T + b with W in
our int4 layout (`max_kernels.int4_layout`).

A decode step reads each weight once, so its time is the weight's bytes over the memory
bandwidth: int4 is a quarter of bfloat16's. For one row, `_int4_gemv_kernel` runs on the
CUDA cores: each program owns BLOCK_N output features and streams their packed rows in
slices of BLOCK_K input features, multiplying the even and odd columns' codes with x's even
and odd columns and applying each group's scale and zero once per group,

    sum_k (q - z) s x = s (sum_k q x - z sum_k x)     (per group),

so the inner loop is one multiply-add per code. For 2 to 16 rows the tile kernel of
`int4_gemm` with a 16-row tile reads the weight once for all of them.

`int4_linear_reference` defines the result; the kernel accumulates in float32 (the factored
sum above differs from the reference by float32 rounding only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.int4_gemm import int4_gemm, sub_block
from max_kernels.int4_layout import check_int4_layout

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806

# Rows up to which a product is a decode step's (the weight read once for all rows).
GEMV_MAX_ROWS = 16


def int4_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
) -> torch.Tensor:
    """x [M, K] (M <= 16) @ W.T (+ bias) -> [M, N] in x's dtype, by the Triton kernels."""
    m, k = x.shape
    if m > GEMV_MAX_ROWS:
        raise ValueError(f"int4_gemv takes at most {GEMV_MAX_ROWS} rows, got {m}")
    if m != 1:
        return int4_gemm(
            x, qweight, scales, zeros, group_size, bias,
            block_m=16, block_n=block_n or 32, block_k=block_k or 128, num_warps=num_warps,
        )  # fmt: skip
    check_int4_layout(qweight, scales, zeros, group_size)
    n = qweight.shape[0]
    if 2 * qweight.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {2 * qweight.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    # `int4_bench --rows 1` on one H100 (2026-12-07): 8 features x 2048 inputs (8 KB of codes
    # a loop step) was the best tile on qkv, gate_up and down, 12-28 % faster than 8 x 512.
    block_n = block_n or 8
    block_k = block_k or min(2048, triton.next_power_of_2(k))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _int4_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, qweight, scales, zeros, bias if bias is not None else scales, y,
        n, k, group_size, k // group_size,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, SUB=sub_block(group_size, block_k),
        num_warps=num_warps,
    )  # fmt: skip
    return y


def int4_kernels_take(group_size: int) -> bool:
    """Whether the Triton kernels take this group size: a power of two from 16 (GPTQ's and
    AWQ's 32, 64, 128), or a multiple of 512 (one group per row of a real model's weight),
    so that every K slice they use lines up with the groups. Others run the reference."""
    power_of_two = group_size >= 16 and group_size & (group_size - 1) == 0
    return power_of_two or (group_size > 0 and group_size % 512 == 0)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, n, k, group, n_groups,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    NSUB: tl.constexpr = BLOCK_K // SUB
    HALF: tl.constexpr = SUB // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    k2 = k // 2
    rows = q_ptr + rn[:, None].to(tl.int64) * k2
    acc = tl.zeros([BLOCK_N, NSUB], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rj = start // 2 + tl.arange(0, BLOCK_K // 2)
        j_ok = rj < k2
        b = tl.load(rows + rj[None, :], mask=n_ok[:, None] & j_ok[None, :], other=0, eviction_policy="evict_first")
        x_even = tl.load(x_ptr + 2 * rj, mask=j_ok, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + 2 * rj + 1, mask=j_ok, other=0.0).to(tl.float32)
        dots = (b & 15).to(tl.float32) * x_even[None, :] + (b >> 4).to(tl.float32) * x_odd[None, :]
        dots = tl.sum(tl.reshape(dots, (BLOCK_N, NSUB, HALF)), axis=2)
        x_sums = tl.sum(tl.reshape(x_even + x_odd, (NSUB, HALF)), axis=1)
        cols = start + tl.arange(0, NSUB) * SUB
        g_ok = n_ok[:, None] & (cols < k)[None, :]
        at = rn[:, None].to(tl.int64) * n_groups + (cols // group)[None, :]
        s = tl.load(s_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
        acc += s * (dots - z * x_sums[None, :])
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)
