"""Multi-head latent attention (MLA, DeepSeek-V2) at decode, over the paged latent cache.

With the key and value up-projections absorbed (the query's non-rotary part already
multiplied by W_UK), every head attends straight over the cached rows: a token's row is its
compressed latent (`rank` wide) followed by its rotary key, and it serves as the key of
every head (score = q · row) while its latent serves as the value (output = Σ p · latent).
The caller multiplies the output latent by W_UV. This is multi-query attention with a wide
key (rank + rope) and value (rank): the work is reading each row once.

The cache holds a row in two halves of width W = ceil((rank + rope) / 2): the first in
the layer's key pages, the rest (zero padded) in its value pages, each [num_pages,
page_size, 1, W] (see `max.nn.latent_attention`). A program of `_mla_split_kernel` takes
one (request, block of heads, split of the context): it reads each row of its split once
for all heads of the block, in four column pieces (each half cut at the largest power of
two A <= W, Triton's tiles being powers of two), and runs flash attention's online softmax.
With more than one split (flash-decoding) the programs leave partial states that
`_mla_combine_kernel` merges. `write_latent_rows` stores the step's new rows (capture-safe:
a slot < 0 marks a padding row, not stored).

`mla_decode_reference` and `write_latent_rows_reference` are the plain-torch specifications
(and the CPU path, through `max_kernels.ops`).
"""

# Triton compile-time parameters are upper case by convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting, unspecialized
from max_kernels.paged_attention import gather_request_kv
from max_kernels.pdl import pdl_launch, pdl_prologue

# "No score yet" in the running max: finite, so a fully masked tile gives exp(-inf) = 0.
NO_SCORE = tl.constexpr(-1.0e30)


# ----------------------------------------------------------------------------------------
# References (plain torch): the specifications.
# ----------------------------------------------------------------------------------------


def write_latent_rows_reference(
    rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Stores rows [T, rank + rope] at their cache slots: columns [0, W) in k_cache, the rest
    (zero padded to W) in v_cache, each [num_pages, page_size, 1, W]. Rows whose slot is < 0
    (padding) are not stored; that skip is a boolean index, which synchronizes with a GPU."""
    width = k_cache.shape[-1]
    if rows.shape[-1] < 2 * width:
        rows = torch.nn.functional.pad(rows, (0, 2 * width - rows.shape[-1]))
    keep = slot_mapping >= 0
    slots, rows = slot_mapping[keep], rows[keep].to(k_cache.dtype)
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, width).index_copy_(0, slots, rows[:, :width])
    v_cache.view(num_slots, width).index_copy_(0, slots, rows[:, width:])


def mla_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    rank: int,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The specification of `mla_decode`, in float32, request by request.

    Args:
        q: [B, H, rank + rope]: each head's absorbed query (q_nope · W_UK) then its rotated
            rotary query; request b's token sits at position context_lens[b] - 1.
        k_cache, v_cache: [num_pages, page_size, 1, W], the two halves of each cached row.
        page_table: int32 [B, P]; context_lens: int32 [B] (0: a padding row, which gets zeros).
        scale: factor applied to q · row.
        rank: latent width (the value is a row's first `rank` columns).
        num_splits: accepted for a matching signature and ignored.
        out: optional [B, H, rank] buffer.

    Returns:
        [B, H, rank] output latents in q's dtype (or `out`).
    """
    del num_splits
    width = q.shape[-1]
    result = torch.zeros(*q.shape[:2], rank, dtype=torch.float32, device=q.device)
    for b, n in enumerate(context_lens.tolist()):
        if n == 0:
            continue
        rows = torch.cat(
            (gather_request_kv(k_cache, page_table[b], n), gather_request_kv(v_cache, page_table[b], n)), dim=-1
        )[:, 0].float()  # [n, 2W]
        probs = (q[b].float() @ rows[:, :width].T * scale).softmax(dim=-1)  # [H, n]
        result[b] = probs @ rows[:, :rank]
    if out is None:
        return result.to(q.dtype)
    out.copy_(result)
    return out


# ----------------------------------------------------------------------------------------
# Triton kernels.
# ----------------------------------------------------------------------------------------


@triton.jit(**unspecialized(pointers=("slot_ptr",)))
def _write_rows_kernel(
    row_ptr, kc_ptr, vc_ptr, slot_ptr, stride_r, stride_kc, stride_vc, row_width, half,
    BLOCK_W: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    # A padding row (slot < 0) stores nothing: its width limit becomes 0.
    limit = tl.where(slot >= 0, half, 0)
    cols = tl.arange(0, BLOCK_W)
    first = tl.load(row_ptr + tok * stride_r + cols, mask=cols < half, other=0.0)
    second = tl.load(row_ptr + tok * stride_r + half + cols, mask=half + cols < row_width, other=0.0)
    tl.store(kc_ptr + slot * stride_kc + cols, first.to(kc_ptr.dtype.element_ty), mask=cols < limit)
    tl.store(vc_ptr + slot * stride_vc + cols, second.to(vc_ptr.dtype.element_ty), mask=cols < limit)


@triton.jit
def _score_piece(q, rows, PRECISION: tl.constexpr):
    """q [BLOCK_H, C] · rows [BLOCK_N, C] -> [BLOCK_H, BLOCK_N], in float32."""
    return tl.dot(q, tl.trans(rows), input_precision=PRECISION)


@triton.jit
def _value_piece(acc, alpha, p, rows, PRECISION: tl.constexpr):
    """acc [BLOCK_H, C] rescaled by alpha, plus p [BLOCK_H, BLOCK_N] · rows [BLOCK_N, C]."""
    return acc * alpha[:, None] + tl.dot(p.to(rows.dtype), rows, input_precision=PRECISION)


@triton.jit(**unspecialized(ints=("stride_tb", "num_splits"), pointers=("table_ptr", "ctx_ptr")))
def _mla_split_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, ctx_ptr, out_ptr, m_ptr, l_ptr, acc_ptr,
    scale, stride_qb, stride_qh, stride_kp, stride_ks, stride_vp, stride_vs, stride_tb,
    stride_ob, stride_oh, num_heads, half, row_width, rank, page_size, num_splits,
    BLOCK_H: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_R: tl.constexpr, HAS_R: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)
    b = tl.program_id(0)
    hb = tl.program_id(1)
    split = tl.program_id(2)
    b64 = b.to(tl.int64)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = heads < num_heads
    # Column pieces of a half: [0, A) and [A, W); of the row: the key half, then the value half.
    offs_a = tl.arange(0, BLOCK_A)
    offs_r = BLOCK_A + tl.arange(0, BLOCK_R)
    r_ok = offs_r < half
    q_row = q_ptr + b64 * stride_qb + heads[:, None].to(tl.int64) * stride_qh
    hm = h_mask[:, None]
    q_ka = tl.load(q_row + offs_a[None, :], mask=hm, other=0.0)
    q_va = tl.load(q_row + half + offs_a[None, :], mask=hm & (half + offs_a < row_width)[None, :], other=0.0)
    if HAS_R:
        q_kr = tl.load(q_row + offs_r[None, :], mask=hm & r_ok[None, :], other=0.0)
        q_vr = tl.load(q_row + half + offs_r[None, :], mask=hm & (r_ok & (half + offs_r < row_width))[None, :], other=0.0)
    if UPCAST:
        q_ka = q_ka.to(tl.float32)
        q_va = q_va.to(tl.float32)
        if HAS_R:
            q_kr = q_kr.to(tl.float32)
            q_vr = q_vr.to(tl.float32)

    # The query sits at ctx - 1 and sees rows [0, ctx); a padding row (ctx 0) reads nothing.
    ctx = tl.load(ctx_ptr + b)
    per_split = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, ctx)

    m_i = tl.full([BLOCK_H], NO_SCORE, tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc_ka = tl.zeros([BLOCK_H, BLOCK_A], dtype=tl.float32)
    acc_va = tl.zeros([BLOCK_H, BLOCK_A], dtype=tl.float32)
    acc_kr = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
    acc_vr = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
    table_row = table_ptr + b64 * stride_tb
    for tile in range(start, end, BLOCK_N):
        tok = tile + tl.arange(0, BLOCK_N)
        n_mask = tok < end
        page = tl.load(table_row + tok // page_size, mask=n_mask, other=0).to(tl.int64)
        slot = tok % page_size
        k_base = (page * stride_kp + slot * stride_ks)[:, None]
        v_base = (page * stride_vp + slot * stride_vs)[:, None]
        nm = n_mask[:, None]
        ka = tl.load(k_ptr + k_base + offs_a[None, :], mask=nm, other=0.0)
        va = tl.load(v_ptr + v_base + offs_a[None, :], mask=nm, other=0.0)
        if UPCAST:
            ka = ka.to(tl.float32)
            va = va.to(tl.float32)
        s = _score_piece(q_ka, ka, PRECISION) + _score_piece(q_va, va, PRECISION)
        if HAS_R:
            kr = tl.load(k_ptr + k_base + offs_r[None, :], mask=nm & r_ok[None, :], other=0.0)
            vr = tl.load(v_ptr + v_base + offs_r[None, :], mask=nm & r_ok[None, :], other=0.0)
            if UPCAST:
                kr = kr.to(tl.float32)
                vr = vr.to(tl.float32)
            s += _score_piece(q_kr, kr, PRECISION) + _score_piece(q_vr, vr, PRECISION)
        s = tl.where(n_mask[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        acc_ka = _value_piece(acc_ka, alpha, p, ka, PRECISION)
        acc_va = _value_piece(acc_va, alpha, p, va, PRECISION)
        if HAS_R:
            acc_kr = _value_piece(acc_kr, alpha, p, kr, PRECISION)
            acc_vr = _value_piece(acc_vr, alpha, p, vr, PRECISION)

    # Only the latent's columns [0, rank) are output (the rotary key's are not a value).
    limit = rank
    if SPLIT:
        # Scratch m, l: [B, H, num_splits]; acc: [B, H, num_splits, rank], contiguous. A
        # split without rows (a graph's splits are sized for the longest context) leaves
        # its acc unwritten: the combine reads acc only where l > 0.
        row = (b64 * num_heads + heads) * num_splits + split
        tl.store(m_ptr + row, m_i, mask=h_mask)
        tl.store(l_ptr + row, l_i, mask=h_mask)
        dst = acc_ptr + row[:, None] * rank
        limit = tl.where(end > start, rank, 0)
    else:
        # l_i is 0 only for a padding row, whose accumulators are 0 too.
        inv = 1.0 / tl.where(l_i > 0.0, l_i, 1.0)
        acc_ka *= inv[:, None]
        acc_va *= inv[:, None]
        acc_kr *= inv[:, None]
        acc_vr *= inv[:, None]
        dst = out_ptr + b64 * stride_ob + heads[:, None].to(tl.int64) * stride_oh
    ty = dst.dtype.element_ty
    tl.store(dst + offs_a[None, :], acc_ka.to(ty), mask=hm & (offs_a < limit)[None, :])
    tl.store(dst + half + offs_a[None, :], acc_va.to(ty), mask=hm & (half + offs_a < limit)[None, :])
    if HAS_R:
        tl.store(dst + offs_r[None, :], acc_kr.to(ty), mask=hm & (r_ok & (offs_r < limit))[None, :])
        tl.store(dst + half + offs_r[None, :], acc_vr.to(ty), mask=hm & (r_ok & (half + offs_r < limit))[None, :])


@triton.jit
def _mla_combine_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, stride_ob, stride_oh, num_heads, rank, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(USE_PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < num_splits
    c_mask = cols < rank
    row = (b * num_heads + h) * num_splits + offs_s
    m = tl.load(m_ptr + row, mask=s_mask, other=NO_SCORE)
    denom = tl.load(l_ptr + row, mask=s_mask, other=0.0)
    # Splits without rows carry m = NO_SCORE and l = 0, weigh nothing, and wrote no acc.
    used = s_mask & (denom > 0.0)
    acc = tl.load(acc_ptr + row[:, None] * rank + cols[None, :], mask=used[:, None] & c_mask[None, :], other=0.0)
    w = tl.exp(m - tl.max(m, 0))
    total = tl.sum(w * denom, 0)
    o = tl.sum(acc * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + cols, o.to(out_ptr.dtype.element_ty), mask=c_mask)


# ----------------------------------------------------------------------------------------
# Host wrappers.
# ----------------------------------------------------------------------------------------


def write_latent_rows(
    rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Triton version of `write_latent_rows_reference` (same arguments), capture-safe."""
    t, row_width = rows.shape
    half = k_cache.shape[-1]
    if row_width > 2 * half:
        raise ValueError(f"rows of {row_width} values do not fit two cache halves of {half}")
    if t == 0:
        return
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    _write_rows_kernel[(t,)](
        rows, k_cache, v_cache, slot_mapping, rows.stride(0), k_cache.stride(1), v_cache.stride(1),
        row_width, half, BLOCK_W=triton.next_power_of_2(half), num_warps=4, **pdl_launch(rows),
    )  # fmt: skip


def _pieces(half: int) -> tuple[int, int]:
    """(BLOCK_A, BLOCK_R): a half's columns as a power-of-two piece A <= W and a rest piece
    (0 when W is a power of two), each at least 16 wide for tl.dot."""
    block_a = 1 << (half.bit_length() - 1)
    rest = half - block_a
    return block_a, (max(16, triton.next_power_of_2(rest)) if rest else 0)


def mla_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    rank: int,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbed MLA decode (Triton): arguments and result as `mla_decode_reference`.

    `num_splits` (default 1) cuts each context into that many parts (split-K); a plain int,
    so that a CUDA graph replays a fixed grid. Capture-safe: no host synchronization.
    """
    batch, num_heads, row_width = q.shape
    half = k_cache.shape[-1]
    if k_cache.shape[2] != 1 or v_cache.shape != k_cache.shape:
        raise ValueError(f"latent caches must be [pages, page_size, 1, W], got {tuple(k_cache.shape)}")
    if half < 16 or row_width > 2 * half or rank > row_width:
        raise ValueError(f"query width {row_width}, rank {rank} do not fit cache halves of {half} (>= 16)")
    num_splits = num_splits or 1
    if out is None:
        out = torch.empty(batch, num_heads, rank, dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    block_a, block_r = _pieces(half)
    # 16 heads per program (tl.dot's smallest tile): DeepSeek-V2-Lite's 16 heads read each
    # row once. Key tiles of 32 rows keep the four accumulators and two tiles in budget.
    block_h = 16
    upcast = interpreting() and q.dtype == torch.bfloat16  # tl.dot of bf16 is wrong there
    precision = "ieee" if upcast or q.dtype == torch.float32 else "tf32"
    # A 16-bit stage of row tiles is ~36 KiB at DeepSeek-V2-Lite's width; float32 tiles
    # are twice that, and two float32 stages would crowd the shared memory.
    stages = 2 if q.element_size() < 4 else 1
    if num_splits > 1:
        m = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
        denom = torch.empty_like(m)
        acc = torch.empty(batch, num_heads, num_splits, rank, dtype=torch.float32, device=q.device)
    else:
        m = denom = acc = out  # not read by the single-split kernel
    grid = (batch, triton.cdiv(num_heads, block_h), num_splits)
    _mla_split_kernel[grid](
        q, k_cache, v_cache, page_table, context_lens, out, m, denom, acc,
        float(scale), q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), page_table.stride(0), out.stride(0), out.stride(1),
        num_heads, half, row_width, rank, k_cache.shape[1], num_splits,
        BLOCK_H=block_h, BLOCK_A=block_a, BLOCK_R=max(block_r, 16), HAS_R=block_r > 0,
        BLOCK_N=32, SPLIT=num_splits > 1, UPCAST=upcast, PRECISION=precision, num_warps=8,
        num_stages=stages, **pdl_launch(q),
    )  # fmt: skip
    if num_splits > 1:
        block_c = min(128, triton.next_power_of_2(rank))
        _mla_combine_kernel[(batch, num_heads, triton.cdiv(rank, block_c))](
            m, denom, acc, out, out.stride(0), out.stride(1), num_heads, rank, num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_C=block_c, num_warps=4, **pdl_launch(q),
        )  # fmt: skip
    return out
