"""Batched gather matrix-vector LoRA products (Punica's BGMV): programs per token row.

A decode step has one token per request, each request possibly with its own adapter: the
rows share no weight tile, so each program reads its row's slot and multiplies one row by
that slot's matrix on the CUDA cores (a LoRA matrix has a few dozen rows: the work is the
weight read). `lora_shrink_bgmv` computes v = x @ A[slot].T, `lora_expand_bgmv` adds
scale * v @ B[slot].T into every output slice of y (q, k and v in one launch, each
column reading its slice's rank vector), so a projection costs two launches. Base-model rows (slot -1) load nothing
and write nothing (v's row is zeroed). The token slots are read on the device, so a CUDA
graph replays these launches for any mix of adapters. `lora_reference` defines the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from max_kernels.backend import unspecialized

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


def lora_shrink_bgmv(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """v [T, R'] = x[t] @ a[slot(t)].T for x [T, K], a [S, R', K] (contiguous), int32 slots [T]."""
    t, k = x.shape
    n = a.shape[1]
    v = torch.empty((t, n), dtype=x.dtype, device=x.device)
    # A few rank rows per program: a decode row's shrink is a weight read of a few hundred
    # kilobytes, which one program alone would stream from one SM.
    block_n = min(triton.next_power_of_2(n), 4)
    block_k = max(16, min(triton.next_power_of_2(k), 1024))
    _shrink_kernel[(t, triton.cdiv(n, block_n))](
        x, a, token_slots, v, k, n, x.stride(0), a.stride(0), a.stride(1), v.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return v


@triton.jit(**unspecialized(pointers=("slot_ptr",)))
def _shrink_kernel(x_ptr, a_ptr, slot_ptr, v_ptr, k, n, sx, sa0, sa1, sv, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    slot = tl.load(slot_ptr + row)
    # A base-model row loads nothing: its limits shrink to zero.
    k_end = tl.where(slot >= 0, k, 0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < n
    base = a_ptr + tl.maximum(slot, 0).to(tl.int64) * sa0 + cols[:, None] * sa1
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        xk = tl.load(x_ptr + row.to(tl.int64) * sx + ks, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(base + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * xk[None, :], axis=1)
    tl.store(v_ptr + row.to(tl.int64) * sv + cols, acc.to(v_ptr.dtype.element_ty), mask=n_ok)


def lora_expand_bgmv(
    y: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    token_slots: torch.Tensor,
    slices: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """y[t, o:o+n] += scales[slot(t)] * v[t, jR:(j+1)R] @ b[slot(t), o:o+n].T in place for
    every output slice j = (o, n) (at most three: q, k, v), in one launch; y [T, N] and
    v [T, len(slices) * R] with contiguous last dimensions, b [S, N, R] (contiguous last
    dimension), float32 scales [S]."""
    if len(slices) > 3:
        raise ValueError(f"lora_expand_bgmv takes at most 3 output slices, got {len(slices)}")
    t, n = y.shape
    r = b.shape[2]
    bounds = [o for o, _ in slices[1:]] + [n] * (3 - len(slices))
    block_r = max(16, triton.next_power_of_2(r))
    block_n = max(16, min(triton.next_power_of_2(n), 4096 // block_r))
    _expand_kernel[(t, triton.cdiv(n, block_n))](
        y, v, b, scales, token_slots, n, r, bounds[0], bounds[1], y.stride(0), v.stride(0), b.stride(0), b.stride(1),
        BLOCK_N=block_n, BLOCK_R=block_r,
    )  # fmt: skip
    return y


@triton.jit(**unspecialized(pointers=("slot_ptr",)))
def _expand_kernel(
    y_ptr, v_ptr, b_ptr, scale_ptr, slot_ptr, n, r, bound1, bound2, sy, sv, sb0, sb1,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    slot = tl.load(slot_ptr + row)
    # A base-model row loads and writes nothing: its limits shrink to zero.
    n_end = tl.where(slot >= 0, n, 0)
    slot = tl.maximum(slot, 0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < n_end
    rs = tl.arange(0, BLOCK_R)
    r_ok = rs < r
    # Each output column reads the rank vector of its slice (q, k or v).
    piece = (cols >= bound1).to(tl.int32) + (cols >= bound2).to(tl.int32)
    mask = n_ok[:, None] & r_ok[None, :]
    vr = tl.load(v_ptr + row.to(tl.int64) * sv + piece[:, None] * r + rs[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(b_ptr + slot.to(tl.int64) * sb0 + cols[:, None] * sb1 + rs[None, :], mask=mask, other=0.0).to(tl.float32)
    # The product is rounded to y's dtype before the scale, as PEFT computes it.
    delta = tl.sum(w * vr, axis=1).to(y_ptr.dtype.element_ty).to(tl.float32)
    delta = (delta * tl.load(scale_ptr + slot)).to(y_ptr.dtype.element_ty).to(tl.float32)
    out = y_ptr + row.to(tl.int64) * sy + cols
    y = tl.load(out, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out, (y + delta).to(y_ptr.dtype.element_ty), mask=n_ok)
