"""Prefill attention over the paged KV cache for a ragged batch (Triton).

A step's new tokens of B requests are concatenated into q [T, Hq, D]. Request b's rows
start at query_start[b]; its cache holds n = context_lens[b] keys, the last q_len of which
are this step's, so its new tokens sit at positions n - q_len .. n - 1 and see a cached
prefix (earlier chunks, prefix-cache hits) as well as each other, causally. Requests of
one new token (decodes mixed into a prefill step) are just rows with q_len 1.

A program of `_prefill_kernel` takes BLOCK_Q consecutive query tokens of one request and
all query heads of one KV head: its BLOCK_M = BLOCK_Q x group rows are (token, head) pairs,
so one pass over the keys serves the whole GQA group. It walks only the key tiles that
some of its rows may see (from the sliding window's start to the causal limit of its last
token, or further where `key_limit` lets a row see keys ahead of it: Gemma 3's image
tokens), so a long prompt costs about half of a full attention matrix, and gathers each
tile's tokens through the page table. An FP8 (e4m3) cache's tiles are decoded to q's dtype
with their per-tensor scales as they are loaded (`max_kernels.fp8_kv_cache`).

`prefill_attention_reference` is the plain-torch specification of the same op: the one
attention reference (`max_kernels.paged_attention`) read request by request in float32.
"""

# Triton compile-time parameters are upper case by convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting, unspecialized
from max_kernels.decode_attention import NO_SCORE, fold_tile, soft_cap
from max_kernels.fp8_kv_cache import dequantize_e4m3, is_fp8, kernel_view, kv_scale
from max_kernels.paged_attention import paged_attention_reference_per_request


def prefill_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    key_limit: torch.Tensor | None = None,
) -> torch.Tensor:
    """The specification of `prefill_attention`: the paged attention reference on the same
    arguments, in float32 (`max_kernels.paged_attention.paged_attention_reference_per_request`).

    `max_query_len` is accepted for a matching signature and ignored. An FP8 cache's keys
    and values are decoded with `k_scale` / `v_scale` into q's dtype.
    """
    del max_query_len
    return paged_attention_reference_per_request(
        q,
        k_cache,
        v_cache,
        page_table,
        query_start,
        context_lens,
        scale,
        sliding_window=sliding_window,
        softcap=softcap,
        sinks=sinks,
        out=out,
        k_scale=k_scale,
        v_scale=v_scale,
        key_limit=key_limit,
    )


@triton.jit(**unspecialized(ints=("stride_tb",), pointers=("table_ptr", "qstart_ptr", "ctx_ptr", "limit_ptr")))
def _prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    qstart_ptr,
    ctx_ptr,
    sinks_ptr,
    out_ptr,
    k_scale_ptr,
    v_scale_ptr,
    limit_ptr,
    scale,
    softcap,
    window,
    stride_qt,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_tb,
    stride_ot,
    stride_oh,
    head_dim,
    page_size,
    G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_SINKS: tl.constexpr,
    USE_LIMIT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,
):
    q_block = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)

    q_start = tl.load(qstart_ptr + b)
    q_len = tl.load(qstart_ptr + b + 1) - q_start
    ctx = tl.load(ctx_ptr + b)
    prefix = ctx - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_mask = offs_d < head_dim
    # Row r is token r // G of this block, query head h * G + r % G.
    first_tok = q_block * BLOCK_Q
    tok = first_tok + offs_m // G
    heads = h * G + offs_m % G
    row_mask = (offs_m < BLOCK_Q * G) & (tok < q_len)
    pos = prefix + tok
    rows = (q_start + tok).to(tl.int64)

    q = tl.load(
        q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    if KV_FP8:
        k_scale = tl.load(k_scale_ptr)
        v_scale = tl.load(v_scale_ptr)
    else:
        k_scale = 1.0
        v_scale = 1.0

    # Keys any row of the block may see: [lo, hi). A block past the request's last token
    # gets an empty range instead of an early return.
    last_tok = tl.minimum(first_tok + BLOCK_Q, q_len) - 1
    hi = tl.where(first_tok < q_len, prefix + last_tok + 1, 0)
    if USE_LIMIT:
        # Rows may see keys ahead of their own (an image's tokens): each row's own last
        # key, and the block walks up to the furthest.
        limit = tl.load(limit_ptr + rows, mask=row_mask, other=0).to(tl.int32)
        hi = tl.maximum(hi, tl.max(tl.where(row_mask, limit + 1, 0), axis=0))
    else:
        limit = pos
    if USE_WINDOW:
        lo = tl.maximum(prefix + first_tok - window + 1, 0)
    else:
        lo = hi * 0

    if USE_SINKS:
        # Starting the running softmax at the sink adds exp(sink - m) to its denominator.
        m_i = tl.load(sinks_ptr + heads, mask=row_mask, other=0.0).to(tl.float32)
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_M], NO_SCORE, tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    table_row = table_ptr + b.to(tl.int64) * stride_tb
    for tile in range(lo, hi, BLOCK_N):
        key = tile + offs_n
        n_mask = key < hi
        page = tl.load(table_row + key // page_size, mask=n_mask, other=0).to(tl.int64)
        slot = key % page_size
        k_off = page * stride_kp + slot * stride_ks + h * stride_kh
        k = tl.load(
            k_ptr + k_off[None, :] + offs_d[:, None],
            mask=d_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        if KV_FP8:
            k = dequantize_e4m3(k, k_scale, q.dtype)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * scale  # [BLOCK_M, BLOCK_N]
        if USE_SOFTCAP:
            s = soft_cap(s, softcap)
        seen = n_mask[None, :] & (key[None, :] <= limit[:, None])
        if USE_WINDOW:
            seen = seen & (key[None, :] > pos[:, None] - window)
        s = tl.where(seen, s, float("-inf"))

        v_off = page * stride_vp + slot * stride_vs + h * stride_vh
        v_ptrs = v_ptr + v_off[:, None] + offs_d[None, :]
        v_mask = n_mask[:, None] & d_mask[None, :]
        m_i, l_i, acc = fold_tile(
            s, v_ptrs, v_mask, m_i, l_i, acc, UPCAST, PRECISION, v_scale, KV_FP8, q.dtype
        )

    # Every real row sees at least its own key; l_i is 0 only on masked padding rows.
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & d_mask[None, :],
    )


def _tile_config(
    group: int, head_dim: int, elem_size: int, max_query_len: int
) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_Q, BLOCK_D, BLOCK_N) sized to keep tiles within shared memory."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    # 128 rows x 64 keys at head dim 128 in 16-bit; smaller for wider elements or heads, so
    # the Q tile plus two stages of K and V tiles stay near 96 KiB of shared memory.
    shrink = (block_d * elem_size) // 256 if block_d * elem_size > 256 else 1
    block_n = max(16, 64 // shrink)
    rows_wanted = triton.next_power_of_2(max(1, max_query_len) * group)
    block_m = max(16, triton.next_power_of_2(group), min(128 // shrink, rows_wanted))
    return block_m, block_m // group, block_d, block_n


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    key_limit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of a ragged batch of new tokens over their paged keys (Triton).

    Args:
        q: [T, Hq, D] the step's new tokens of all requests, concatenated.
        k_cache, v_cache: [num_pages, page_size, Hkv, D], same dtype as q (float32,
            bfloat16 or float16) or float8_e4m3fn; this step's keys and values are
            already written.
        page_table: int32 [B, W]; token j of request b lives in page page_table[b, j //
            page_size] at offset j % page_size.
        query_start: int32 [B + 1]; request b's rows are query_start[b]:query_start[b+1].
        context_lens: int32 [B]; keys of request b in the cache, this step's included.
        max_query_len: host int, at least the longest request's new tokens (sets the grid).
        scale: factor applied to q·k.
        sliding_window: if set, a query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.
        sinks: optional float32 [Hq]: a learned logit per head that joins the softmax
            denominator only (gpt-oss attention sinks).
        out: optional [T, Hq, D] buffer to write into.
        k_scale, v_scale: float32 [1] per-tensor scales of an FP8 cache (None: 1.0);
            other caches ignore them.
        key_limit: optional int [T]: the last key position each token may see, past its
            own where keys ahead are visible (Gemma 3's image tokens); None: causal.

    Returns:
        [T, Hq, D] in q's dtype (`out` if given).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    batch = context_lens.shape[0]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads do not group over {num_kv_heads} KV heads")
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or batch == 0 or max_query_len <= 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    for t in (k_cache, v_cache, page_table, out):
        if t.stride(-1) != 1:
            raise ValueError(f"tensor of shape {tuple(t.shape)} is not contiguous in its last dim")
    # Head dim and page size are runtime arguments: one compiled kernel per padded head
    # width, group size, dtype and options serves every page size.
    group = num_q_heads // num_kv_heads
    block_m, block_q, block_d, block_n = _tile_config(
        group, head_dim, q.element_size(), max_query_len
    )
    # tl.dot of bfloat16 is wrong in the interpreter: upcast there (see backend.py).
    upcast = interpreting() and q.dtype == torch.bfloat16
    precision = "ieee" if upcast or q.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(max_query_len, block_q), batch, num_kv_heads)
    kv_fp8 = is_fp8(k_cache)
    if kv_fp8:
        k_scale, v_scale = kv_scale(k_scale, q), kv_scale(v_scale, q)
        k_cache, v_cache = kernel_view(k_cache), kernel_view(v_cache)
    else:
        k_scale = v_scale = q  # not read
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        page_table,
        query_start,
        context_lens,
        sinks.contiguous() if sinks is not None else q,
        out,
        k_scale,
        v_scale,
        key_limit if key_limit is not None else query_start,
        float(scale),
        float(softcap) if softcap is not None else 1.0,
        int(sliding_window) if sliding_window is not None else 0,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        page_table.stride(0),
        out.stride(0),
        out.stride(1),
        head_dim,
        page_size,
        G=group,
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        USE_WINDOW=sliding_window is not None,
        USE_SOFTCAP=softcap is not None,
        USE_SINKS=sinks is not None,
        USE_LIMIT=key_limit is not None,
        UPCAST=upcast,
        PRECISION=precision,
        KV_FP8=kv_fp8,
        num_warps=8 if block_m >= 64 else 4,
        num_stages=2,
    )
    return out
