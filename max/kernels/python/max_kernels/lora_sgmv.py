"""Segmented gather matrix multiplications for LoRA (Punica's SGMV): prefill and mixed steps.

In a ragged step each request's tokens are one contiguous segment, and all the tokens of
a segment use the same adapter: a program takes a tile of BLOCK_M rows of one segment and
multiplies it by its segment's slot matrix on the tensor cores (`tl.dot`), so a long prompt
reads its adapter once per tile instead of once per row. The host lists the tiles of the
step's adapter rows (`segment_tiles`: first row, end row, slot), so the grid is (tiles,
output tiles) and covers no base-model row and no empty tile; a tile of slot -1 (a graph's
unused tile) exits at once. `lora_reference` defines the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from max_kernels.backend import unspecialized

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


BLOCK_M = 16


@dataclass
class LoRASegments:
    """A ragged step's adapter rows as tiles of at most BLOCK_M rows of one request each:
    `tiles` int32 [3, num_tiles] on the device holds each tile's first row, end row and
    adapter slot (tiles of base-model requests are left out; a tile of slot -1 is skipped)."""

    tiles: torch.Tensor

    @property
    def num_tiles(self) -> int:
        """The kernels' grid along the rows."""
        return self.tiles.shape[1]


def segment_tiles(query_start: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """int32 [3, num_tiles]: (first row, end row, slot) of every BLOCK_M-row tile of the
    requests whose rows are [query_start[g], query_start[g + 1]) and that run an adapter
    (slots[g] >= 0); the grid then covers only rows that use an adapter."""
    starts, ends = np.asarray(query_start[:-1], dtype=np.int64), np.asarray(query_start[1:], dtype=np.int64)
    keep = np.asarray(slots) >= 0
    starts, ends, kept = starts[keep], ends[keep], np.asarray(slots)[keep]
    counts = -(-(ends - starts) // BLOCK_M)
    seg = np.repeat(np.arange(len(starts)), counts)
    first_tile = np.repeat(np.cumsum(counts) - counts, counts)
    tile_start = starts[seg] + BLOCK_M * (np.arange(int(counts.sum())) - first_tile)
    return np.stack([tile_start, np.minimum(tile_start + BLOCK_M, ends[seg]), kept[seg]]).astype(np.int32)


def _precision(dtype: torch.dtype) -> str:
    # float32 tiles multiply in full precision (TF32 would miss the float32 reference).
    return "ieee" if dtype == torch.float32 else "tf32"


def lora_shrink_sgmv(x: torch.Tensor, a: torch.Tensor, segments: LoRASegments) -> torch.Tensor:
    """v [T, R'] = x[rows of g] @ a[slots[g]].T for each segment g; x [T, K], a [S, R', K]
    (contiguous). Rows of base-model segments are left unwritten."""
    t, k = x.shape
    n = a.shape[1]
    v = torch.empty((t, n), dtype=x.dtype, device=x.device)
    block_n = max(16, triton.next_power_of_2(n))
    if segments.num_tiles == 0:
        return v
    _shrink_kernel[(segments.num_tiles,)](
        x, a, segments.tiles, segments.tiles.stride(0), v, k, n, x.stride(0), a.stride(0), a.stride(1), v.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=32, PRECISION=_precision(x.dtype),
    )  # fmt: skip
    return v


# The tiles are a view into a step's upload and their count changes every step: neither
# may make Triton compile another variant mid-run (`backend.unspecialized`).
@triton.jit(**unspecialized(ints=("st",), pointers=("tile_ptr",)))
def _shrink_kernel(
    x_ptr, a_ptr, tile_ptr, st, v_ptr, k, n, sx, sa0, sa1, sv,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    first = tl.load(tile_ptr + tile)
    end = tl.load(tile_ptr + st + tile)
    slot = tl.load(tile_ptr + 2 * st + tile)
    if (slot >= 0) & (first < end):
        rows = first + tl.arange(0, BLOCK_M)
        m_ok = rows < end
        cols = tl.arange(0, BLOCK_N)
        n_ok = cols < n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, k, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < k
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            wt = tl.load(
                a_ptr + slot.to(tl.int64) * sa0 + cols[None, :] * sa1 + ks[:, None],
                mask=k_ok[:, None] & n_ok[None, :], other=0.0,
            )  # fmt: skip
            acc += tl.dot(xt, wt, input_precision=PRECISION)
        out = v_ptr + rows[:, None].to(tl.int64) * sv + cols[None, :]
        tl.store(out, acc.to(v_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def lora_expand_sgmv(
    y: torch.Tensor, v: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, segments: LoRASegments
) -> torch.Tensor:
    """y[rows of g] += scales[s] * v[rows of g] @ b[s].T in place, s = slots[g]; y [T, N] and
    v [T, R] views with a contiguous last dimension, b [S, N, R] (last dimension contiguous)."""
    n = y.shape[1]
    r = b.shape[2]
    block_r = max(16, triton.next_power_of_2(r))
    block_n = 64
    if segments.num_tiles == 0:
        return y
    _expand_kernel[(segments.num_tiles, triton.cdiv(n, block_n))](
        y, v, b, scales, segments.tiles, segments.tiles.stride(0), n, r, y.stride(0), v.stride(0), b.stride(0), b.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_R=block_r, PRECISION=_precision(y.dtype),
    )  # fmt: skip
    return y


@triton.jit(**unspecialized(ints=("st",), pointers=("tile_ptr",)))
def _expand_kernel(
    y_ptr, v_ptr, b_ptr, scale_ptr, tile_ptr, st, n, r, sy, sv, sb0, sb1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    first = tl.load(tile_ptr + tile)
    end = tl.load(tile_ptr + st + tile)
    slot = tl.load(tile_ptr + 2 * st + tile)
    if (slot >= 0) & (first < end):
        rows = first + tl.arange(0, BLOCK_M)
        m_ok = rows < end
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = cols < n
        rs = tl.arange(0, BLOCK_R)
        r_ok = rs < r
        vt = tl.load(v_ptr + rows[:, None].to(tl.int64) * sv + rs[None, :], mask=m_ok[:, None] & r_ok[None, :], other=0.0)
        wt = tl.load(
            b_ptr + slot.to(tl.int64) * sb0 + cols[None, :] * sb1 + rs[:, None],
            mask=r_ok[:, None] & n_ok[None, :], other=0.0,
        )  # fmt: skip
        # Rounded to y's dtype before the scale, as PEFT computes it.
        delta = tl.dot(vt, wt, input_precision=PRECISION).to(y_ptr.dtype.element_ty).to(tl.float32)
        delta = (delta * tl.load(scale_ptr + slot)).to(y_ptr.dtype.element_ty).to(tl.float32)
        mask = m_ok[:, None] & n_ok[None, :]
        out = y_ptr + rows[:, None].to(tl.int64) * sy + cols[None, :]
        y = tl.load(out, mask=mask, other=0.0).to(tl.float32)
        tl.store(out, (y + delta).to(y_ptr.dtype.element_ty), mask=mask)
