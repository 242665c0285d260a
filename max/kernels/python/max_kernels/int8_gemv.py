"""The int8 weight-only product for decode steps (1 to 16 rows): y = x @ W.T + b with W in
our int8 layout (`max_kernels.int8_layout`).

A decode step reads each weight once, so its time is the weight's bytes over the memory
bandwidth: int8 with a float16 scale per 32 weights is 53 % of bfloat16's. For one row,
`_int8_gemv_kernel` runs on the CUDA cores: each program owns BLOCK_N output features and
streams their rows in slices of BLOCK_K input features, summing code * x per group and
applying the group's scale once,

    sum_k q s x = s sum_k q x     (per group),

so the inner loop is one multiply-add per code. For 2 to 16 rows the tile kernel of
`int8_gemm` with a 16-row tile reads the weight once for all of them.

`int8_linear_reference` defines the result; the kernel accumulates in float32 (the
factored sum differs from the reference by float32 rounding only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.int4_gemm import sub_block
from max_kernels.int8_gemm import int8_gemm
from max_kernels.int8_layout import check_int8_layout

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806

# Rows up to which a product is a decode step's (the weight read once for all rows).
GEMV_MAX_ROWS = 16


def int8_gemv(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
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
        raise ValueError(f"int8_gemv takes at most {GEMV_MAX_ROWS} rows, got {m}")
    if m != 1:
        return int8_gemm(
            x, codes, scales, group_size, bias,
            block_m=16, block_n=block_n or 32, block_k=block_k or 128, num_warps=num_warps,
        )  # fmt: skip
    check_int8_layout(codes, scales, group_size)
    n = codes.shape[0]
    if codes.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {codes.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    # Untuned first choice (as int4's measured best: ~8 KB of codes a loop step).
    block_n = block_n or 8
    block_k = block_k or min(1024, triton.next_power_of_2(k))
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _int8_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, codes, scales, bias if bias is not None else scales, y,
        n, k, group_size, k // group_size,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, SUB=sub_block(group_size, block_k),
        num_warps=num_warps,
    )  # fmt: skip
    return y


def int8_kernels_take(group_size: int) -> bool:
    """Whether the Triton kernels take this group size: a power of two from 16, so that
    every K slice they use lines up with the groups. Others run the reference."""
    return group_size >= 16 and group_size & (group_size - 1) == 0


@triton.jit
def _int8_gemv_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr, n, k, group, n_groups,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    NSUB: tl.constexpr = BLOCK_K // SUB
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    rows = q_ptr + rn[:, None].to(tl.int64) * k
    acc = tl.zeros([BLOCK_N, NSUB], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rk = start + tl.arange(0, BLOCK_K)
        k_ok = rk < k
        c = tl.load(rows + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
        xv = tl.load(x_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        dots = tl.sum(tl.reshape(c.to(tl.float32) * xv[None, :], (BLOCK_N, NSUB, SUB)), axis=2)
        cols = start + tl.arange(0, NSUB) * SUB
        at = rn[:, None].to(tl.int64) * n_groups + (cols // group)[None, :]
        s = tl.load(s_ptr + at, mask=n_ok[:, None] & (cols < k)[None, :], other=0.0).to(tl.float32)
        acc += s * dots
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)
