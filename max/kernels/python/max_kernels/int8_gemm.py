"""The int8 weight-only product on the tensor cores: y = x @ W.T + b for x [M, K] in 16 bits
(or float32) and W in our int8 layout (`max_kernels.int8_layout`).

Each program owns a BLOCK_M x BLOCK_N tile of y. Per slice of BLOCK_K input features it
loads the codes [BLOCK_N, BLOCK_K], multiplies each group's columns by its scale, rounds the
values once to x's dtype (as the reference's weight is) and runs one `tl.dot`. Used for
prefill and large batches, and with a 16-row tile for 2 to 16 rows (the weight read once
for all of them: `int8_gemv` calls it for batched decode).

`int8_linear_reference` (dequantize, then `F.linear`) defines the result; the kernel
accumulates in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.int4_gemm import sub_block
from max_kernels.int8_layout import check_int8_layout

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806


def int8_gemm(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    block_m: int | None = None,
    block_n: int = 128,
    block_k: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype by the Triton tile kernel."""
    check_int8_layout(codes, scales, group_size)
    m, k = x.shape
    n = codes.shape[0]
    if codes.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {codes.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if block_m is None:
        block_m = 16 if m <= 16 else (64 if m <= 512 else 128)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_gemm_kernel[grid](
        x, codes, scales, bias if bias is not None else scales, y,
        m, n, k, group_size, k // group_size, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SUB=sub_block(group_size, block_k),
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y


@triton.jit
def scale_codes(c, s_ptr, rn, n_ok, start, k, group, n_groups,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
    """float32 [BLOCK_N, BLOCK_K]: the codes of a K slice times their groups' scales."""
    NSUB: tl.constexpr = BLOCK_K // SUB
    cols = start + tl.arange(0, NSUB) * SUB
    at = rn[:, None].to(tl.int64) * n_groups + (cols // group)[None, :]
    s = tl.load(s_ptr + at, mask=n_ok[:, None] & (cols < k)[None, :], other=0.0).to(tl.float32)
    w = tl.reshape(c.to(tl.float32), (BLOCK_N, NSUB, SUB)) * s[:, :, None]
    return tl.reshape(w, (BLOCK_N, BLOCK_K))


@triton.jit
def _int8_gemm_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr, m, n, k, group, n_groups, sx, sy,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rk = start + tl.arange(0, BLOCK_K)
        k_ok = rk < k
        c = tl.load(q_ptr + rn[:, None].to(tl.int64) * k + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        xt = tl.load(x_ptr + rm[:, None].to(tl.int64) * sx + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = scale_codes(c, s_ptr, rn, n_ok, start, k, group, n_groups, BLOCK_N, BLOCK_K, SUB)
        w = tl.trans(w.to(xt.dtype))
        if IEEE:
            acc = tl.dot(xt, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm[:, None].to(tl.int64) * sy + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
