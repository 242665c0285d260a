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

With a `LoRAEpilogue` the kernel also adds a LoRA adapter's product to its row, as
`lora_sgmv.lora_expand_sgmv` would in a second launch: a batch-1 decode step with an
adapter then costs one launch more per projection (the shrink) instead of two. The
adapter's B rows of a program are requested before the wait, with its first weight slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from max_kernels.backend import switch, unspecialized
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


@dataclass(frozen=True)
class LoRAEpilogue:
    """A LoRA product that `gemv` adds to its row y: scales[s] * v_j @ b[s, o:o+n].T into
    each output slice j = (o, n) (at most three: q, k, v), s the slot of the step's one tile
    (`tiles` [3, T] of `lora_sgmv.LoRAGroups`: first row, end row, slot; nothing is added
    when its slot is -1 or it is empty), v_j = v[jR:(j+1)R] with v the sum of the shrink's
    float32 `partials` [splits, 1, R'] rounded to y's dtype; b [S, N, R] (contiguous last
    dimension), float32 scales [S]. Rounded as `lora_expand_sgmv` rounds (PEFT's order)."""

    partials: torch.Tensor
    b: torch.Tensor
    scales: torch.Tensor
    tiles: torch.Tensor
    slices: tuple[tuple[int, int], ...]


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
    lora: LoRAEpilogue | None = None,
) -> torch.Tensor:
    """x [1, K] @ weight.T (+ bias) -> [1, N] in x's dtype, by the Triton kernel, plus the
    LoRA product `lora` describes, if given.

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
        *_lora_arguments(lora, n, weight),
        HAS_BIAS=bias is not None,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        EVICT_FIRST=cfg.evict_first,
        HAS_LORA=lora is not None,
        SPLITS=1 if lora is None else triton.next_power_of_2(lora.partials.shape[0]),
        BLOCK_R=1 if lora is None else max(16, triton.next_power_of_2(lora.b.shape[2])),
        num_warps=cfg.num_warps,
        **pdl_launch(x),
    )  # fmt: skip
    return out


def _lora_arguments(lora: LoRAEpilogue | None, n: int, weight: torch.Tensor) -> tuple:
    """The kernel's LoRA arguments (p, b, scales, tiles, tile stride, splits, rank, the two
    slice bounds and the strides), placeholders without one."""
    if lora is None:
        return (weight, weight, weight, weight, 0, 0, 0, n, n, 0, 0, 0)
    if len(lora.slices) > 3:
        raise ValueError(f"a LoRA epilogue takes at most 3 output slices, got {len(lora.slices)}")
    if lora.b.shape[1] != n or lora.b.stride(-1) != 1:
        raise ValueError(f"LoRA b of shape {tuple(lora.b.shape)} does not fit {n} outputs")
    p, b, tiles = lora.partials, lora.b, lora.tiles
    bounds = [o for o, _ in lora.slices[1:]] + [n] * (3 - len(lora.slices))
    return (p, b, lora.scales, tiles, tiles.stride(0), p.shape[0], b.shape[2], bounds[0], bounds[1], p.stride(0), b.stride(0), b.stride(1))


@triton.jit
def _load_weight_slice(rows, cols, k, n_ok, EVICT_FIRST: tl.constexpr):
    """Weight rows [BLOCK_N] x columns [BLOCK_K], zeros past N and K."""
    mask = n_ok[:, None] & (cols < k)[None, :]
    if EVICT_FIRST:
        return tl.load(rows[:, None] + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
    return tl.load(rows[:, None] + cols[None, :], mask=mask, other=0.0)


# The LoRA arguments are views into a step's upload or fixed per shape: none may make
# Triton compile another variant mid-run (`backend.unspecialized`).
@triton.jit(**unspecialized(ints=("st", "splits", "sp0"), pointers=("tile_ptr",)))
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, n, k, stride_w,
    p_ptr, lb_ptr, scale_ptr, tile_ptr, st, splits, r, bound1, bound2, sp0, slb0, slb1,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
    HAS_LORA: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_R: tl.constexpr,
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
    if HAS_LORA:
        # The step's tile (an input, written before the step) and the adapter's B rows
        # depend on no kernel of the step either.
        slot = tl.load(tile_ptr + 2 * st)
        lora_on = (slot >= 0) & (tl.load(tile_ptr) < tl.load(tile_ptr + st))
        # Without an adapter the rank shrinks to zero: nothing is loaded, nothing added.
        r_ok = tl.arange(0, BLOCK_R) < tl.where(lora_on, r, 0)
        lb = tl.load(
            lb_ptr + tl.maximum(slot, 0).to(tl.int64) * slb0 + rn[:, None].to(tl.int64) * slb1
            + tl.arange(0, BLOCK_R)[None, :],
            mask=n_ok[:, None] & r_ok[None, :], other=0.0,
        ).to(tl.float32)  # fmt: skip
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
    if HAS_LORA:
        y = _add_lora(y, rn, p_ptr, lb, scale_ptr, slot, r_ok, splits, r, bound1, bound2, sp0, y_ptr.dtype.element_ty, BLOCK_N, SPLITS, BLOCK_R)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _add_lora(y, rn, p_ptr, lb, scale_ptr, slot, r_ok, splits, r, bound1, bound2, sp0, DT: tl.constexpr,
              BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """y [BLOCK_N] (float32) with the LoRA product of its rows rn added, rounded as
    `lora_expand_sgmv` rounds: the base output, v, v @ B.T, its scaled value and the sum
    each in the output dtype DT. lb is the rows' B [BLOCK_N, BLOCK_R] (zeros where the
    step's tile has no adapter)."""
    y = y.to(DT).to(tl.float32)
    lo = tl.program_id(0) * BLOCK_N
    piece = (rn >= bound1).to(tl.int32) + (rn >= bound2).to(tl.int32)
    sp = tl.arange(0, SPLITS)
    rs = tl.arange(0, BLOCK_R)
    p_mask = (sp[:, None] < splits) & r_ok[None, :]
    delta = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(3):
        if j == 0:
            start, stop = 0, bound1
        elif j == 1:
            start, stop = bound1, bound2
        else:
            start, stop = bound2, 2147483647
        if (lo < stop) & (lo + BLOCK_N > start):
            # Slice j's rank vector: the shrink's partial sums, added and rounded.
            v = tl.sum(tl.load(p_ptr + sp[:, None] * sp0 + j * r + rs[None, :], mask=p_mask, other=0.0), axis=0)
            d = tl.sum(lb * v.to(DT).to(tl.float32)[None, :], axis=1)
            delta = tl.where(piece == j, d, delta)
    delta = delta.to(DT).to(tl.float32)
    delta = (delta * tl.load(scale_ptr + tl.maximum(slot, 0))).to(DT).to(tl.float32)
    return y + delta
