"""One-row products (batch-1 decode): y = x @ W.T + b for x [1, K], W [N, K] in 16 bits.

At one row a linear layer only reads its weight, so its time is the weight's bytes over the
memory bandwidth, plus the ramp-up and tail of a short kernel. cuBLAS reaches ~91 % of the
copy rate on an 8B model's products but splits K on some of them (a second kernel for the
reduction) and cannot start before the previous kernel ends. `gemv` is a CUDA-core Triton
kernel: each program owns BLOCK_N output features and streams their rows in BLOCK_K
slices, loading the next slice before it multiplies the current one. With programmatic
dependent launch (`max_kernels.pdl`) it issues its first weight loads before it waits for
the kernel that produced x, so the weight stream overlaps the tail of the previous kernel.

`gemv_reference` (`F.linear`) defines the result; the kernel accumulates in float32 and
rounds once, so it differs from cuBLAS by the order of the float32 sums only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from max_kernels.backend import switch
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters: output features per program, K slice, warps, and whether weight
    loads are marked evict-first (they are read once; x and the activations stay in L2)."""

    block_n: int
    block_k: int
    num_warps: int = 4
    evict_first: bool = True


# Best of `gemv_bench`'s grid on one H200 (graphs of back-to-back products on distinct
# weights), for the shapes it measured, where it beat the rule below by more than 5 %.
_MEASURED = {
    (6144, 4096): GemvConfig(8, 512),  # Llama-3.1-8B / Qwen3-8B qkv: 12.9 us (rule 14.8+)
}


def default_config(n: int, k: int) -> GemvConfig:
    """The launch configuration for a [n, k] weight. The rule, from `gemv_bench` on an H200:
    a slice of 4096 weights per loop step and four warps (32 weights, four 16-byte loads,
    per thread); K slices of 1024, or 2048 for tall weights (16k+ rows: the gate/up
    projections, an LM head), where the extra rows per program cost more than longer rows.
    At the 8B model's shapes this is within 1 % of the grid's best except on qkv (listed)."""
    if (n, k) in _MEASURED:
        return _MEASURED[(n, k)]
    block_k = min(2048 if n >= 16384 else 1024, triton.next_power_of_2(k))
    return GemvConfig(max(1, min(16, 4096 // block_k)), block_k)


def gemv_enabled() -> bool:
    """Whether one-row products take the GEMV (`configure(gemv=False)`, the CLI's
    `--no-gemv`, sends them to cuBLAS, for comparison)."""
    return switch("gemv")


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight.T [K, N] (+ bias [N]) -> [M, N], as `F.linear`."""
    return F.linear(x, weight, bias)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: GemvConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [1, K] @ weight.T (+ bias) -> [1, N] in x's dtype, by the Triton kernel.

    weight [N, K] must have a contiguous last dimension; x may be any [1, K] view with a
    contiguous last dimension. Safe to capture in a CUDA graph.
    """
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"gemv takes one row, got x of shape {tuple(x.shape)}")
    n, k = weight.shape
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} features, the weight {k}")
    if weight.stride(-1) != 1 or x.stride(-1) != 1:
        raise ValueError("gemv needs contiguous last dimensions")
    cfg = config or default_config(n, k)
    if out is None:
        out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        EVICT_FIRST=cfg.evict_first,
        num_warps=cfg.num_warps,
        **pdl_launch(x),
    )  # fmt: skip
    return out


@triton.jit
def _load_weight_slice(rows, cols, k, n_ok, EVICT_FIRST: tl.constexpr):
    """Weight rows [BLOCK_N] x columns [BLOCK_K], zeros past N and K."""
    mask = n_ok[:, None] & (cols < k)[None, :]
    if EVICT_FIRST:
        return tl.load(rows[:, None] + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
    return tl.load(rows[:, None] + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, n, k, stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    rk = tl.arange(0, BLOCK_K)
    rows = w_ptr + rn.to(tl.int64) * stride_w
    if USE_PDL:
        gdc_launch_dependents()
    # The weight does not depend on the previous kernel: its first slice is requested
    # before the wait, so it streams in while that kernel finishes.
    w = _load_weight_slice(rows, rk, k, n_ok, EVICT_FIRST)
    if USE_PDL:
        gdc_wait()
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        x = tl.load(x_ptr + start + rk, mask=start + rk < k, other=0.0).to(tl.float32)
        # Next slice in flight while this one is multiplied (empty past the last).
        w_next = _load_weight_slice(rows, start + BLOCK_K + rk, k, n_ok, EVICT_FIRST)
        acc += w.to(tl.float32) * x[None, :]
        w = w_next
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)
