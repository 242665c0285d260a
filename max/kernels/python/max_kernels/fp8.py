"""FP8 (e4m3) products with dynamic per-token activation scales: vLLM's `--quantization fp8`.

A linear layer keeps its weight as float8_e4m3fn with one float32 scale per output channel
(w[n, k] ~= w_scale[n] * w_q[n, k]). At each call the activations are quantized the same
way per row (token): x[m, k] ~= x_scale[m] * x_q[m, k], with x_scale[m] = max_k |x[m, k]| /
448 (e4m3's largest finite value), so no row can overflow. The product of the two FP8
operands runs on the tensor cores at twice bfloat16's rate, reading half the bytes, and
both scales are applied in its epilogue (`torch._scaled_mm` with row-wise scales, CUDA
compute capability 8.9 or newer):

    y[m, n] = x_scale[m] * w_scale[n] * sum_k x_q[m, k] * w_q[n, k]

Products of at most `SMALL_M` rows are weight-only instead (x unquantized, the weight
decoded in registers: `fp8_gemv` for one row, `fp8_weight_only_linear` for more), which is
the faster when the weight's bytes are the cost. `max_kernels.ops.fp8_linear` applies
that rule.

The `_reference` functions compute the same quantization and the same product in float32
on any device: the CPU path, and what the GPU result is checked against.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803

FP8_DTYPE = torch.float8_e4m3fn
# Products of at most this many rows (decode steps of small batches) keep x unquantized:
# they are bound by reading the weight, and a separate quantization kernel per product
# would cost more than the tensor cores save.
SMALL_M = 16
FP8_MAX = 448.0
# A row of zeros gets this scale rather than 0, so that dividing by it stays finite.
_MIN_SCALE = 1e-12


@functools.cache
def fp8_supported(device: torch.device) -> bool:
    """Whether `device` multiplies FP8 on its tensor cores (CUDA capability 8.9 or newer).
    Cached: every FP8 product of an eager step asks."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_fp8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes [N, K], float32 scales [N]) of a float weight [N, K], one scale per row."""
    return quantize_fp8_rows_reference(weight)


def quantize_fp8_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes [M, K], float32 scales [M]) of x [M, K]: each row scaled so that its
    largest magnitude maps to 448."""
    xf = x.float()
    scales = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=_MIN_SCALE)
    codes = (xf / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return codes, scales


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `quantize_fp8_rows_reference` for x [M, K] (one program per row)."""
    if x.dim() != 2:
        raise ValueError(f"expected x [M, K], got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    codes = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return codes, scales
    block = triton.next_power_of_2(k)
    warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    _quantize_rows_kernel[(m,)](
        x, codes, scales, k, x.stride(0), FP8_MAX=FP8_MAX, MIN_SCALE=_MIN_SCALE, BLOCK=block, num_warps=warps
    )
    return codes, scales


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, k, sx, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < k
    x = tl.load(x_ptr + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) / FP8_MAX, MIN_SCALE)
    # True division, as the reference's: x * (1 / scale) can round differently.
    q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
    tl.store(q_ptr + row * k + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row, scale)


def fp8_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] (float) times the FP8 weight (codes [N, K], scales [N]) -> [M, N] in x's
    dtype: the activations quantized per row, the product of the codes in float32, then
    both scales (the GPU path's arithmetic, up to the order of the sums)."""
    x_q, x_scale = quantize_fp8_rows_reference(x)
    y = (x_q.float() @ w_q.float().t()) * x_scale[:, None] * w_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def fp8_weight_only_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] times the FP8 weight with x unquantized (the small-batch path): float32
    products of x and the decoded weight, then the weight's scales; [M, N] in x's dtype."""
    y = (x.float() @ w_q.float().t()) * w_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def fp8_weight_only_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block_n: int = 32,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Triton `fp8_weight_only_linear_reference` for a few rows (M <= SMALL_M): each program
    reads BLOCK_N rows of the e4m3 weight once, decodes them in registers and multiplies
    them with all of x's rows. A decode step of few tokens is bound by reading the weight,
    so half the bytes of bfloat16 is the whole gain; x is not quantized (no extra kernel)."""
    m, k = x.shape
    n = w_q.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    # The best tiles of `max.benchmark.kernels.fp8_bench` on an H200 for Llama-3.1-8B's
    # products at 1-16 rows (BENCHMARKS.md): wide weights (gate_up) take shorter K tiles.
    if block_k is None:
        block_k = 256 if n > 8192 else 512
    if num_stages is None:
        num_stages = 3 if n > 8192 else 4
    grid = (triton.cdiv(n, block_n),)
    _fp8_weight_only_kernel[grid](
        x, w_q, w_scale, bias if bias is not None else w_scale, y, m, n, k, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=block_n,
        BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
    )
    return y


@triton.jit
def _fp8_weight_only_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, m, n, k, sx, sy,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn < n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rk = start + tl.arange(0, BLOCK_K)
        k_ok = rk < k
        x = tl.load(x_ptr + rm[:, None] * sx + rk[None, :], mask=(rm < m)[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + rn[:, None].to(tl.int64) * k + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        # e4m3 -> x's dtype is exact; the tensor cores sum in float32 (BLOCK_M >= 16 rows,
        # the padding rows masked to zero); float32 inputs are multiplied as float32, not tf32.
        if IEEE:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    acc = acc * tl.load(ws_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * sy + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=(rm < m)[:, None] & n_ok[None, :])


def fp8_gemv(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block_n: int = 8,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 4,
) -> torch.Tensor:
    """`fp8_weight_only_linear` for one row on the CUDA cores (no tensor-core tile padded to
    16 rows): each program decodes BLOCK_N rows of the weight and dots them with x. At one
    row it reads Llama-3.1-8B's weights 1.3-1.5x faster than the tile kernel (fp8_bench)."""
    m, k = x.shape
    if m != 1:
        raise ValueError(f"fp8_gemv takes one row, got {m}")
    n = w_q.shape[0]
    if block_k is None:  # fp8_bench's best on an H200: longer rows of K for narrow weights
        block_k = 1024 if n <= 4096 else 512
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _fp8_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, w_q, w_scale, bias if bias is not None else w_scale, y, n, k,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
    )
    return y


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, n, k,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rk = start + tl.arange(0, BLOCK_K)
        k_ok = rk < k
        x = tl.load(x_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn[:, None].to(tl.int64) * k + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1) * tl.load(ws_ptr + rn, mask=n_ok, other=0.0)
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, out.to(y_ptr.dtype.element_ty), mask=n_ok)


def fp8_linear(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`fp8_linear_reference` on the tensor cores: the Triton row quantization, then
    `torch._scaled_mm` with row-wise scales (float32 [M, 1] and [1, N]), in bfloat16, then
    cast to x's dtype."""
    x_q, x_scale = quantize_fp8_rows(x)
    # Row-wise scaled products write bfloat16 only; other dtypes are cast from it.
    y = torch._scaled_mm(
        x_q, w_q.t(), scale_a=x_scale[:, None], scale_b=w_scale[None, :], out_dtype=torch.bfloat16
    )
    y = y if bias is None else y + bias
    return y if y.dtype == x.dtype else y.to(x.dtype)
