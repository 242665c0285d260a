"""A decode step's attention in one kernel: rope, KV-cache write, split attention and merge.

In a step whose requests all decode one token (every step replayed from a decode CUDA
graph), each layer used to run three kernels after its qkv projection: `rope_and_write_kv`,
`decode_attention`'s split kernel and its combine kernel. At batch 1 those are ~9 us per
layer of mostly latency (an 8B model: 0.3 ms of a 4.3 ms step). `rope_decode_attention`
does the same work in one launch. A program (request, KV head, split):

1. before waiting for the previous kernel (programmatic dependent launch), reads what that
   kernel cannot have written: the step's context length, page table, rope row and cache
   slot, and its first tile of keys and values cached by earlier steps;
2. rotates its query heads and the token's key as `rope_and_write_kv` does (rounded to the
   input dtype), and the program whose split holds the new token stores its key and value
   in the cache; every program uses the new token's key and value from registers, so no
   program reads a slot written in this kernel;
3. runs the split's online softmax (`decode_attention`'s split kernel);
4. with several splits, writes its partial state and counts itself in; the last program of
   a (request, KV head) to arrive merges the splits of the group's query heads and resets
   the counter for the next layer.

The result equals `rope_and_write_kv` followed by `decode_attention` (same rounding, same
merge); `rope_decode_attention_reference` is that composition of the two references.
"""

# Triton compile-time parameters are upper case by convention.
# ruff: noqa: N803

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting, unspecialized
from max_kernels.decode_attention import (
    NO_SCORE,
    check_inner_contiguous,
    decode_attention_reference,
    default_num_splits,
    fold_values,
    merge_splits,
    soft_cap,
    tile_config,
)
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch
from max_kernels.rotary_kv import rope_and_write_kv_reference, rope_factors, rotate_rows

# Arrival counters per device, one per (request, KV head); each merge resets its own to 0.
# Splitting happens only below ~264 (request, KV head) pairs (default_num_splits), so one
# allocation, made by the first (eager) call before any graph capture, serves every step.
_COUNTERS: dict[torch.device, torch.Tensor] = {}
_MIN_COUNTERS = 1024


def fused_decode_enabled() -> bool:
    """`MAX_FUSED_DECODE=0` in the environment keeps the three-kernel path (for comparison)."""
    return os.environ.get("MAX_FUSED_DECODE", "1") != "0"


def rope_decode_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`rope_and_write_kv_reference`, then `decode_attention_reference` (same arguments as
    `rope_decode_attention`)."""
    q = rope_and_write_kv_reference(q, k, v, rows, cos, sin, k_cache, v_cache, slot_mapping)
    return decode_attention_reference(
        q,
        k_cache,
        v_cache,
        page_table,
        context_lens,
        scale,
        sliding_window=sliding_window,
        softcap=softcap,
        sinks=sinks,
        num_splits=num_splits,
        out=out,
    )


def _arrival_counters(device: torch.device, needed: int) -> torch.Tensor:
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < needed:
        counters = torch.zeros(max(needed, _MIN_COUNTERS), dtype=torch.int32, device=device)
        _COUNTERS[device] = counters
    return counters


def rope_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rope, KV-cache write and decode attention of one new token per request, one launch.

    Args:
        q: [B, Hq, D] queries; k, v: [B, Hkv, D] the new keys and values, before rope (views
            of the qkv projection: any token and head strides, last dimension contiguous).
        rows, cos, sin: token b rotates by row rows[b] of the float32 tables [P, rotary_dim]
            (`RotaryEmbedding.step_tables`).
        k_cache, v_cache: [num_pages, page_size, Hkv, D] in q's dtype.
        slot_mapping: [B] cache slot of each new token; < 0 for a padding row.
        page_table, context_lens, scale, sliding_window, softcap, sinks, num_splits, out:
            as in `decode_attention`; context_lens counts the new token.

    Returns:
        [B, Hq, D] in q's dtype (`out` if given). Safe to capture in a CUDA graph once a
        first call has run outside capture (it allocates the arrival counters).
    """
    batch, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads do not group over {num_kv_heads} KV heads")
    rotary_dim = cos.shape[-1]
    if rotary_dim > head_dim or rotary_dim % 2:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}")
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads)
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    q, k, v, cos, sin = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, cos, sin))
    check_inner_contiguous(k_cache, v_cache, page_table, out)
    group = num_q_heads // num_kv_heads
    block_g, block_d, block_n = tile_config(group, head_dim, q.element_size())
    upcast = interpreting() and q.dtype == torch.bfloat16
    precision = "ieee" if upcast or q.dtype == torch.float32 else "tf32"
    split = num_splits > 1
    if split:
        m = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        denom = torch.empty_like(m)
        acc = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        counters = _arrival_counters(q.device, batch * num_kv_heads)
    else:
        m = denom = acc = counters = out  # unused without splits
    _rope_decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k, v, rows, cos, sin, slot_mapping,
        k_cache, v_cache, page_table, context_lens,
        sinks.contiguous() if sinks is not None else q,
        out, m, denom, acc, counters,
        float(scale),
        float(softcap) if softcap is not None else 1.0,
        int(sliding_window) if sliding_window is not None else 0,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        page_table.stride(0), out.stride(0), out.stride(1),
        num_q_heads, num_kv_heads, head_dim, rotary_dim // 2, rotary_dim, page_size, num_splits,
        G=group,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        BLOCK_S=triton.next_power_of_2(num_splits),
        SPLIT=split,
        USE_WINDOW=sliding_window is not None,
        USE_SOFTCAP=softcap is not None,
        USE_SINKS=sinks is not None,
        SINK_IN_LOOP=sinks is not None and not split,
        UPCAST=upcast,
        PRECISION=precision,
        num_warps=4,
        num_stages=2,
        **pdl_launch(q),
    )  # fmt: skip
    return out


@triton.jit
def _load_kv_tile(kc_ptr, vc_ptr, table_row, tok, n_mask, h, page_size, offs_d, d_mask,
                  skc_p, skc_s, skc_h, svc_p, svc_s, svc_h):  # fmt: skip
    """Keys [BLOCK_D, BLOCK_N] (transposed for q @ k) and values [BLOCK_N, BLOCK_D] of the
    tokens `tok` of one request, gathered through its page table row; zeros where masked."""
    page = tl.load(table_row + tok // page_size, mask=n_mask, other=0).to(tl.int64)
    slot = tok % page_size
    k_off = page * skc_p + slot * skc_s + h * skc_h
    k = tl.load(kc_ptr + k_off[None, :] + offs_d[:, None], mask=d_mask[:, None] & n_mask[None, :], other=0.0)
    v_off = page * svc_p + slot * svc_s + h * svc_h
    v = tl.load(vc_ptr + v_off[:, None] + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    return k, v


@triton.jit
def _fold_kv_tile(q, k, v, tok, n_mask, new, k_new, v_new, m_i, l_i, acc, scale, softcap,
                  USE_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One key tile into the running softmax, the new token's key and value taken from
    registers (its cache slot is written by this kernel, so it is not read back)."""
    is_new = tok == new
    k = tl.where(is_new[None, :], k_new[:, None], k)
    v = tl.where(is_new[:, None], v_new[None, :], v)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, k, input_precision=PRECISION) * scale  # [BLOCK_G, BLOCK_N]
    if USE_SOFTCAP:
        s = soft_cap(s, softcap)
    s = tl.where(n_mask[None, :], s, float("-inf"))
    return fold_values(s, v, m_i, l_i, acc, PRECISION)


@triton.jit(
    **unspecialized(
        ints=("stride_tb", "num_splits"), pointers=("rows_ptr", "slot_ptr", "table_ptr", "ctx_ptr")
    )
)
def _rope_decode_kernel(
    q_ptr, k_ptr, v_ptr, rows_ptr, cos_ptr, sin_ptr, slot_ptr,
    kc_ptr, vc_ptr, table_ptr, ctx_ptr, sinks_ptr,
    out_ptr, m_ptr, l_ptr, acc_ptr, count_ptr,
    scale, softcap, window,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, s_cos, s_sin,
    skc_p, skc_s, skc_h, svc_p, svc_s, svc_h,
    stride_tb, so_b, so_h,
    num_q_heads, num_kv_heads, head_dim, half, rotary_dim, page_size, num_splits,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SPLIT: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_SINKS: tl.constexpr,
    SINK_IN_LOOP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < G
    d_mask = offs_d < head_dim
    heads = h * G + offs_g

    # Before the wait, only what the previous kernel cannot have written: the step's inputs
    # and the keys and values earlier steps cached (the new token's slot is read, stale,
    # and replaced from registers below).
    if USE_PDL:
        gdc_launch_dependents()
    ctx = tl.load(ctx_ptr + b)
    new = ctx - 1  # the query's position; a padding row (ctx 0) gets an empty key range
    if USE_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    else:
        lo = ctx * 0
    per_split = tl.cdiv(tl.cdiv(ctx - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, ctx)
    table_row = table_ptr + b64 * stride_tb
    partner, sign2, rot2, c, s = rope_factors(rows_ptr + b, cos_ptr, sin_ptr, s_cos, s_sin, offs_d, half, rotary_dim)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    tok = start + offs_n
    n_mask = tok < end
    k_first, v_first = _load_kv_tile(kc_ptr, vc_ptr, table_row, tok, n_mask, h64, page_size, offs_d, d_mask,
                                     skc_p, skc_s, skc_h, svc_p, svc_s, svc_h)  # fmt: skip
    if USE_PDL:
        gdc_wait()

    # The query heads and the new key, rotated and rounded as rope_and_write_kv stores them.
    q_rows = (q_ptr + b64 * sq_b + heads.to(tl.int64) * sq_h)[:, None]
    q = rotate_rows(q_rows, offs_d, partner, sign2, rot2, c, s, g_mask[:, None] & d_mask[None, :])
    q = q.to(q_ptr.dtype.element_ty)
    if UPCAST:
        q = q.to(tl.float32)
    k_row = (k_ptr + b64 * sk_b + h64 * sk_h + tl.zeros([1], tl.int64))[:, None]
    k_new = rotate_rows(k_row, offs_d, partner, sign2, rot2, c, s, d_mask[None, :])
    k_new = tl.reshape(k_new, [BLOCK_D]).to(kc_ptr.dtype.element_ty)
    v_new = tl.load(v_ptr + b64 * sv_b + h64 * sv_h + offs_d, mask=d_mask, other=0.0).to(vc_ptr.dtype.element_ty)
    # The split holding the new token stores it (a padding row's slot is < 0: no store).
    # (A scalar condition `&` a vector mask breaks the interpreter's masks: a limit instead.)
    owner = (new >= start) & (new < end) & (slot >= 0)
    store_dims = tl.where(owner, head_dim, 0)
    page = slot // page_size
    offset = slot % page_size
    tl.store(kc_ptr + page * skc_p + offset * skc_s + h64 * skc_h + offs_d, k_new, mask=offs_d < store_dims)
    tl.store(vc_ptr + page * svc_p + offset * svc_s + h64 * svc_h + offs_d, v_new, mask=offs_d < store_dims)

    if SINK_IN_LOOP:
        # Starting the running softmax at the sink adds exp(sink - m) to its denominator.
        m_i = tl.load(sinks_ptr + heads, mask=g_mask, other=0.0).to(tl.float32)
        l_i = tl.full([BLOCK_G], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_G], NO_SCORE, tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    # The first tile (possibly empty: every key masked changes nothing), then the rest.
    m_i, l_i, acc = _fold_kv_tile(q, k_first, v_first, tok, n_mask, new, k_new, v_new, m_i, l_i, acc,
                                  scale, softcap, USE_SOFTCAP, UPCAST, PRECISION)  # fmt: skip
    for tile in range(start + BLOCK_N, end, BLOCK_N):
        tok = tile + offs_n
        n_mask = tok < end
        k_t, v_t = _load_kv_tile(kc_ptr, vc_ptr, table_row, tok, n_mask, h64, page_size, offs_d, d_mask,
                                 skc_p, skc_s, skc_h, svc_p, svc_s, svc_h)  # fmt: skip
        m_i, l_i, acc = _fold_kv_tile(q, k_t, v_t, tok, n_mask, new, k_new, v_new, m_i, l_i, acc,
                                      scale, softcap, USE_SOFTCAP, UPCAST, PRECISION)  # fmt: skip

    if SPLIT:
        # Scratch is [B, Hq, num_splits] (+ [D] for acc), as decode_attention's.
        row = (b64 * num_q_heads + heads) * num_splits + split
        tl.store(m_ptr + row, m_i, mask=g_mask)
        tl.store(l_ptr + row, l_i, mask=g_mask)
        tl.store(acc_ptr + row[:, None] * head_dim + offs_d[None, :], acc, mask=g_mask[:, None] & d_mask[None, :])
        # Release our partial state (every thread's stores, hence the barrier first), count
        # ourselves in; the last program to arrive merges.
        tl.debug_barrier()
        counter = count_ptr + b64 * num_kv_heads + h
        arrived = tl.atomic_add(counter, 1, sem="acq_rel")
        if arrived == num_splits - 1:
            tl.store(counter, 0)  # ready for the next layer's kernel
            offs_s = tl.arange(0, BLOCK_S)
            s_mask = offs_s < num_splits
            for g in tl.static_range(G):
                hq = h * G + g
                sink = 0.0
                if USE_SINKS:
                    sink = tl.load(sinks_ptr + hq).to(tl.float32)
                rows_s = (b64 * num_q_heads + hq) * num_splits + offs_s
                o = merge_splits(m_ptr, l_ptr, acc_ptr, rows_s, s_mask, offs_d, d_mask, head_dim, sink, USE_SINKS)
                tl.store(out_ptr + b64 * so_b + hq * so_h + offs_d, o.to(out_ptr.dtype.element_ty), mask=d_mask)
    else:
        # l_i is 0 only for a padding row without sinks, whose acc is 0 too.
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(
            out_ptr + b64 * so_b + heads[:, None] * so_h + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None] & d_mask[None, :],
        )
