"""Segmented gather matrix multiplications for LoRA (Punica's SGMV), for every kind of step.

The host groups a step's adapter rows by slot (`group_rows`: the rows of each adapter in a
list, cut into tiles of at most BLOCK_M rows of one slot; base-model rows are left out).
A program takes a tile, gathers its rows and multiplies them by the tile's slot matrix on
the tensor cores (`tl.dot`), so an adapter's matrices are read once per tile of up to
BLOCK_M rows, whether the rows are one prompt's or many decoding requests' (a per-row
kernel reads them once per row: at 256 decode rows of an 8B model, ~20 GB of L2 reads a
step by our count).

A projection costs two launches, whatever the number of output slices (q, k, v):
`lora_shrink_sgmv` splits the reduction over K between programs (a batch-1 decode step
has one tile, and one program reading a down projection's A alone would stream 460 KB
from one SM) and writes float32 partial sums [splits, T, R']; `lora_expand_sgmv` sums
them, rounds to y's dtype (the shrink's output, as PEFT computes it), and adds
scale * v @ B[slot].T into each output slice of the tile's rows. The tiles are read on
the device, so a CUDA graph replays both launches for any mix of adapters: its grid
covers the most tiles a batch of its size can have (`max_group_tiles`), unused tiles
having slot -1. `lora_reference` defines the result.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from max_kernels.backend import unspecialized
from max_kernels.pdl import pdl_launch, pdl_prologue

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


# Rows per tile: BLOCK_M, or PREFILL_BLOCK_M where each adapter has many rows in the step
# (`tile_rows`). `lora_bench` on one H100 (Llama-3.1-8B shapes, rank 16, 8 adapters): a
# 256-row decode step is fastest with 16-row tiles (the LoRA products 111 us a layer
# against 118 and 161 with 32 and 64), an 8192-row prefill of 200-token prompts with 64
# (911 us against 1,043 with 16).
BLOCK_M = 16
PREFILL_BLOCK_M = 64
_PREFILL_ROWS_PER_ADAPTER = 256
_BLOCK_K = 128
_SHRINK_BLOCK_N = 64
_EXPAND_BLOCK_N = 256


@dataclass(frozen=True)
class LoRAStack:
    """One projection's adapter weights, a slot per adapter resident on the device: `a`
    [S, len(slices) * R, K] (the A of each output slice, stacked), `b` [S, N, R], float32
    `scales` [S] (alpha / r, or rsLoRA's), and `slices`, the (offset, size) of each output
    slice in N (q, k and v of a fused projection; one slice for the others). Zeros where a
    slot holds no adapter or past an adapter's rank."""

    a: torch.Tensor
    b: torch.Tensor
    scales: torch.Tensor
    slices: Sequence[tuple[int, int]]


@dataclass
class LoRAGroups:
    """A step's adapter rows grouped by slot: `rows` int32 [R] (the rows of each slot
    together) and `tiles` int32 [3, num_tiles], each tile's first and end index into
    `rows` and its slot (a tile of slot -1 is skipped), tiles of at most `block_m` rows.
    Both on the device."""

    rows: torch.Tensor
    tiles: torch.Tensor
    block_m: int = BLOCK_M  # the most rows of a tile (`group_rows`' block_m)

    @property
    def num_tiles(self) -> int:
        """The kernels' grid along the rows."""
        return self.tiles.shape[1]


def tile_rows(token_slots: np.ndarray) -> int:
    """The tile height for a step whose token t uses slot token_slots[t]: PREFILL_BLOCK_M
    where its adapters have on average 256 rows or more (prefill chunks), else BLOCK_M."""
    slots = np.asarray(token_slots)
    adapter_rows = int((slots >= 0).sum())
    present = len(np.unique(slots[slots >= 0]))
    return PREFILL_BLOCK_M if present and adapter_rows >= _PREFILL_ROWS_PER_ADAPTER * present else BLOCK_M


def group_rows(token_slots: np.ndarray, block_m: int = BLOCK_M) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tiles) of `LoRAGroups` for a step whose token t uses slot token_slots[t]
    (-1: the base model): the adapter rows sorted by slot (stable: a prompt's rows stay in
    order), and tiles of at most `block_m` rows of one slot."""
    slots = np.asarray(token_slots)
    order = np.argsort(slots, kind="stable")
    rows = order[slots[order] >= 0]
    run_slots = slots[rows]
    # Runs of one slot in `rows`: [starts[i], ends[i]).
    cuts = np.flatnonzero(np.diff(run_slots)) + 1
    starts = np.concatenate([[0], cuts]) if len(rows) else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([cuts, [len(rows)]]) if len(rows) else np.zeros(0, dtype=np.int64)
    counts = -(-(ends - starts) // block_m)
    run = np.repeat(np.arange(len(starts)), counts)
    first_tile = np.repeat(np.cumsum(counts) - counts, counts)
    tile_start = starts[run] + block_m * (np.arange(int(counts.sum())) - first_tile)
    tiles = np.stack([tile_start, np.minimum(tile_start + block_m, ends[run]), run_slots[starts[run]]])
    return rows.astype(np.int32), tiles.astype(np.int32).reshape(3, -1)


def max_group_tiles(num_rows: int, num_slots: int, block_m: int = BLOCK_M) -> int:
    """The most tiles `group_rows` gives for `num_rows` rows over `num_slots` slots (each
    slot present adds at most one partial tile)."""
    return min(num_rows, num_rows // block_m + min(num_slots, num_rows))


def _precision(dtype: torch.dtype) -> str:
    # float32 tiles multiply in full precision (TF32 would miss the float32 reference).
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's interpreter: a few splits, to exercise them
    return torch.cuda.get_device_properties(device).multi_processor_count


def _max_splits(block_r: int, block_m: int) -> int:
    # The expand sums the splits in one [splits, block_m, BLOCK_R] load: keep it in registers.
    return max(1, min(16, 4096 // (block_m * block_r)))


def _expand_block_n(block_m: int, n: int) -> int:
    """Output columns per expand step (`lora_bench`, one H100: 128 for 64-row tiles; for
    16-row tiles 128 on tall projections such as gate_up, 256 on the others)."""
    return 128 if block_m >= PREFILL_BLOCK_M or n >= 16384 else _EXPAND_BLOCK_N


def _split_k(k: int, programs: int, max_splits: int, device: torch.device) -> tuple[int, int]:
    """(splits, K per split): enough programs to reach about two per SM."""
    want = max(1, 2 * _num_sms(device) // max(1, programs))
    splits = max(1, min(want, max_splits, triton.cdiv(k, _BLOCK_K)))
    chunk = triton.cdiv(triton.cdiv(k, splits), _BLOCK_K) * _BLOCK_K
    return triton.cdiv(k, chunk), chunk


def lora_shrink_sgmv(
    x: torch.Tensor, a: torch.Tensor, groups: LoRAGroups, rank: int, max_splits: int | None = None
) -> torch.Tensor:
    """Float32 partial sums p [splits, T, R'] whose sum over splits is x[t] @ a[slot(t)].T
    for each grouped row t; x [T, K], a [S, R', K] (contiguous), `rank` the slots' rank R
    (R' = slices * R). Rows outside the groups are left unwritten. At most `max_splits`
    splits (default: as many as `lora_expand_sgmv` sums in registers)."""
    t, k = x.shape
    n = a.shape[1]
    block_n = max(16, min(_SHRINK_BLOCK_N, triton.next_power_of_2(n)))
    n_blocks = triton.cdiv(n, block_n)
    if max_splits is None:
        max_splits = _max_splits(max(16, triton.next_power_of_2(rank)), groups.block_m)
    splits, chunk = _split_k(k, max(1, groups.num_tiles) * n_blocks, max_splits, x.device)
    partials = torch.empty((splits, t, n), dtype=torch.float32, device=x.device)
    if groups.num_tiles == 0:
        return partials
    rows, tiles = groups.rows, groups.tiles
    _shrink_kernel[(groups.num_tiles, splits, n_blocks)](
        x, a, rows, tiles, tiles.stride(0), partials, k, n, chunk // _BLOCK_K,
        x.stride(0), a.stride(0), a.stride(1), partials.stride(0), partials.stride(1),
        BLOCK_M=groups.block_m, BLOCK_N=block_n, BLOCK_K=_BLOCK_K, PRECISION=_precision(x.dtype), **pdl_launch(x),
    )  # fmt: skip
    return partials


# The rows and tiles are views into a step's upload, and their count, the K per split and
# the partial sums' stride (T * R') change from step to step: none may make Triton compile
# another variant mid-run (`backend.unspecialized`).
@triton.jit(**unspecialized(ints=("st", "chunk_blocks", "sp0"), pointers=("rows_ptr", "tile_ptr")))
def _shrink_kernel(
    x_ptr, a_ptr, rows_ptr, tile_ptr, st, p_ptr, k, n, chunk_blocks, sx, sa0, sa1, sp0, sp1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    split = tl.program_id(1)
    # The tiles are the step's inputs, written before the step: no kernel of it writes them.
    first = tl.load(tile_ptr + tile)
    end = tl.load(tile_ptr + st + tile)
    slot = tl.load(tile_ptr + 2 * st + tile)
    valid = (slot >= 0) & (first < end)
    # A skipped tile (slot -1) loads and stores nothing: its limits shrink to zero, and
    # the loop runs no iteration.
    idx = first + tl.arange(0, BLOCK_M)
    m_ok = idx < tl.where(valid, end, first)
    rows = tl.load(rows_ptr + idx, mask=m_ok, other=0).to(tl.int64)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < n
    # In whole BLOCK_K blocks, so that the compiler sees the loads' alignment (and
    # pipelines them) although `chunk_blocks` is not specialized.
    k_lo = split * chunk_blocks * BLOCK_K
    k_hi = tl.where(valid, tl.minimum(k_lo + chunk_blocks * BLOCK_K, k), k_lo)
    a_rows = a_ptr + tl.maximum(slot, 0).to(tl.int64) * sa0 + cols[None, :] * sa1
    # The adapter's A does not depend on the kernels ahead: its first slice is requested
    # before the wait, and each next slice while the current one is multiplied.
    ks = k_lo + tl.arange(0, BLOCK_K)
    wt = tl.load(a_rows + ks[:, None], mask=(ks < k_hi)[:, None] & n_ok[None, :], other=0.0)
    pdl_prologue(USE_PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_hi
        xt = tl.load(x_ptr + rows[:, None] * sx + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        ks_next = ks + BLOCK_K
        wt_next = tl.load(a_rows + ks_next[:, None], mask=(ks_next < k_hi)[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(xt, wt, input_precision=PRECISION)
        wt = wt_next
    out = p_ptr + split.to(tl.int64) * sp0 + rows[:, None] * sp1 + cols[None, :]
    tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])


def _expand_column_blocks(num_tiles: int, n: int, block_n: int, device: torch.device) -> int:
    """Column blocks of BLOCK_N each program of the expand walks: one while the grid is
    small (a decode step), more where tiles x blocks would be tens of thousands of short
    programs (a prefill step: each would pay its tile's loads and a latency chain for
    16 x 256 outputs), keeping about eight programs per SM."""
    blocks = triton.cdiv(n, block_n)
    per_program = max(1, (num_tiles * blocks) // (8 * _num_sms(device)))
    return min(blocks, 16, triton.next_power_of_2(per_program))


def lora_expand_sgmv(
    y: torch.Tensor,
    partials: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    groups: LoRAGroups,
    slices: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """y[t, o:o+n] += scales[s] * v[t, jR:(j+1)R] @ b[s, o:o+n].T in place for each grouped
    row t (slot s) and output slice j = (o, n) (at most three: q, k, v), where v is the sum
    of the shrink's `partials` rounded to y's dtype; y [T, N] (contiguous last dimension),
    b [S, N, R] (contiguous last dimension), float32 scales [S]. One launch."""
    if len(slices) > 3:
        raise ValueError(f"lora_expand_sgmv takes at most 3 output slices, got {len(slices)}")
    n = y.shape[1]
    r = b.shape[2]
    if groups.num_tiles == 0:
        return y
    bounds = [o for o, _ in slices[1:]] + [n] * (3 - len(slices))
    block_r = max(16, triton.next_power_of_2(r))
    splits = _max_splits(block_r, groups.block_m)
    if partials.shape[0] > splits:
        raise ValueError(f"{partials.shape[0]} partial sums: lora_shrink_sgmv was given another rank than b's {r}")
    rows, tiles = groups.rows, groups.tiles
    block_n = _expand_block_n(groups.block_m, n)
    column_blocks = _expand_column_blocks(groups.num_tiles, n, block_n, y.device)
    _expand_kernel[(groups.num_tiles, triton.cdiv(n, block_n * column_blocks))](
        y, partials, b, scales, rows, tiles, tiles.stride(0), n, r, partials.shape[0], bounds[0], bounds[1],
        column_blocks, y.stride(0), partials.stride(0), partials.stride(1), b.stride(0), b.stride(1),
        BLOCK_M=groups.block_m, BLOCK_N=block_n, BLOCK_R=block_r, SPLITS=splits,
        NUM_SLICES=len(slices), PRECISION=_precision(y.dtype), **pdl_launch(y),
    )  # fmt: skip
    return y


@triton.jit
def _rank_vector(p_rows, j, r, p_mask, DT: tl.constexpr):
    """Slice j's rank vectors of the tile's rows [BLOCK_M, BLOCK_R]: the shrink's partial
    sums added, rounded to y's dtype as PEFT's lora_A output is."""
    return tl.sum(tl.load(p_rows + j * r, mask=p_mask, other=0.0), axis=0).to(DT)


@triton.jit(**unspecialized(ints=("st", "splits", "sp0", "column_blocks"), pointers=("rows_ptr", "tile_ptr")))
def _expand_kernel(
    y_ptr, p_ptr, b_ptr, scale_ptr, rows_ptr, tile_ptr, st, n, r, splits, bound1, bound2, column_blocks,
    sy, sp0, sp1, sb0, sb1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, SPLITS: tl.constexpr,
    NUM_SLICES: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    first = tl.load(tile_ptr + tile)
    end = tl.load(tile_ptr + st + tile)
    slot = tl.load(tile_ptr + 2 * st + tile)
    valid = (slot >= 0) & (first < end)
    # A skipped tile (slot -1) loads nothing: its limits shrink to zero.
    idx = first + tl.arange(0, BLOCK_M)
    m_ok = idx < tl.where(valid, end, first)
    rows = tl.load(rows_ptr + idx, mask=m_ok, other=0).to(tl.int64)
    lo = tl.program_id(1) * column_blocks * BLOCK_N
    hi = tl.where(valid, tl.minimum(lo + column_blocks * BLOCK_N, n), lo)
    rs = tl.arange(0, BLOCK_R)
    r_ok = rs < r
    b_rows = b_ptr + tl.maximum(slot, 0).to(tl.int64) * sb0 + rs[:, None]
    # The adapter's B does not depend on the kernels ahead: its first block is requested
    # before the wait, and each next block while the current one is added.
    cols = lo + tl.arange(0, BLOCK_N)
    wt = tl.load(b_rows + cols[None, :] * sb1, mask=r_ok[:, None] & (cols < hi)[None, :], other=0.0)
    pdl_prologue(USE_PDL)
    dt = y_ptr.dtype.element_ty
    sp = tl.arange(0, SPLITS)
    p_mask = (sp[:, None, None] < splits) & m_ok[None, :, None] & r_ok[None, None, :]
    p_rows = p_ptr + sp[:, None, None].to(tl.int64) * sp0 + rows[None, :, None] * sp1 + rs[None, None, :]
    # Each slice's rank vectors, once for all the program's columns.
    v0 = _rank_vector(p_rows, 0, r, p_mask, dt)
    v1 = v0
    v2 = v0
    if NUM_SLICES > 1:
        v1 = _rank_vector(p_rows, 1, r, p_mask, dt)
    if NUM_SLICES > 2:
        v2 = _rank_vector(p_rows, 2, r, p_mask, dt)
    scale = tl.load(scale_ptr + tl.maximum(slot, 0))
    for c0 in range(lo, hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        n_ok = cols < hi
        next_cols = cols + BLOCK_N
        wt_next = tl.load(b_rows + next_cols[None, :] * sb1, mask=r_ok[:, None] & (next_cols < hi)[None, :], other=0.0)
        # Each output column takes the rank vector of its slice (q, k or v).
        delta = tl.dot(v0, wt, input_precision=PRECISION)
        if NUM_SLICES > 1:
            piece = (cols >= bound1).to(tl.int32) + (cols >= bound2).to(tl.int32)
            delta = tl.where(piece[None, :] == 1, tl.dot(v1, wt, input_precision=PRECISION), delta)
            if NUM_SLICES > 2:
                delta = tl.where(piece[None, :] == 2, tl.dot(v2, wt, input_precision=PRECISION), delta)
        # Rounded to y's dtype before the scale, as PEFT computes it.
        delta = delta.to(dt).to(tl.float32)
        delta = (delta * scale).to(dt).to(tl.float32)
        mask = m_ok[:, None] & n_ok[None, :]
        out = y_ptr + rows[:, None] * sy + cols[None, :]
        y = tl.load(out, mask=mask, other=0.0).to(tl.float32)
        tl.store(out, (y + delta).to(dt), mask=mask)
        wt = wt_next
