"""Decode attention over the paged KV cache: one query token per request, split-K (Triton).

Each request of a decode step has one new query token at position `context_lens[b] - 1`,
whose key and value are already in the cache. A program of `_decode_split_kernel` handles
one (request, KV head, split): all query heads of the KV head's GQA group share one pass
over that split's keys, so each key and value is read from memory once. Key tiles gather
their tokens through the page table, so a tile may span several small pages. With more
than one split (flash-decoding), every program writes a partial softmax state (running
max, sum, unnormalised output) and `_decode_combine_kernel` merges the splits and adds the
attention sink, if any. The number of splits is a plain int fixed by the caller, so that a
CUDA graph can replay the same grid for every step. An FP8 (e4m3) cache is read through its
per-tensor scales: each key and value tile is decoded to q's dtype in registers
(`max_kernels.fp8_kv_cache`), so memory traffic halves and the products stay as they are.

`decode_attention_reference` is the plain-torch specification of the same op: the one
attention reference (`max_kernels.paged_attention`) read request by request in float32.
"""

# Triton compile-time parameters are upper case by convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting, unspecialized
from max_kernels.fp8_kv_cache import dequantize_e4m3, is_fp8, kernel_view, kv_scale
from max_kernels.paged_attention import paged_attention_reference_per_request
from max_kernels.pdl import pdl_launch, pdl_prologue

# Stands for "no score yet" in the running max: finite, so a tile whose keys are all
# masked gives exp(-inf - NO_SCORE) = 0 instead of exp(-inf + inf) = NaN.
NO_SCORE = tl.constexpr(-1.0e30)

# Four programs per streaming multiprocessor of an H100/H200 (132 SMs): enough loads in
# flight for one long request (see default_num_splits).
_TARGET_PROGRAMS = 4 * 132
_MIN_KEYS_PER_SPLIT = 256
_MAX_SPLITS = 128


# ----------------------------------------------------------------------------------------
# Reference (plain torch): the specification.
# ----------------------------------------------------------------------------------------


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The specification of `decode_attention`: the paged attention reference on the same
    arguments, one query row per request, in float32
    (`max_kernels.paged_attention.paged_attention_reference_per_request`).

    A request with context length 0 is batch padding and gets zeros. `num_splits` is
    accepted for a matching signature and ignored. An FP8 cache's keys and values are
    decoded with `k_scale` / `v_scale` into q's dtype before the attention.
    """
    del num_splits
    query_start = torch.arange(q.shape[0] + 1, device=q.device)
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
    )


# ----------------------------------------------------------------------------------------
# Triton kernels.
# ----------------------------------------------------------------------------------------


@triton.jit
def soft_cap(s, cap):
    """cap * tanh(s / cap), with tanh from exp (libdevice tanh is not portable here)."""
    # 1 - 2 / (e^2x + 1) saturates cleanly to +-1 when e^2x over- or underflows.
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * s / cap) + 1.0))


@triton.jit
def fold_tile(
    s,
    v_ptrs,
    v_mask,
    m_i,
    l_i,
    acc,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    v_scale,
    KV_FP8: tl.constexpr,
    KV_DTYPE: tl.constexpr,
):
    """Folds one key tile into a running softmax (flash attention's online softmax).

    s [M, N] are the tile's scores (masked ones -inf); v_ptrs [N, D] point at its values,
    which with KV_FP8 are e4m3 codes decoded with v_scale into KV_DTYPE (q's dtype).
    Returns the new running max [M], sum [M] and unnormalised output [M, D].
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    if KV_FP8:
        v = dequantize_e4m3(v, v_scale, KV_DTYPE)
    if UPCAST:
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit(**unspecialized(ints=("stride_tb", "num_splits"), pointers=("table_ptr", "ctx_ptr")))
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    ctx_ptr,
    sinks_ptr,
    out_ptr,
    m_ptr,
    l_ptr,
    acc_ptr,
    k_scale_ptr,
    v_scale_ptr,
    scale,
    softcap,
    window,
    stride_qb,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_tb,
    stride_ob,
    stride_oh,
    num_q_heads,
    head_dim,
    page_size,
    num_splits,
    G: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_SINKS: tl.constexpr,
    SINK_IN_LOOP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_prologue(USE_PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    b64 = b.to(tl.int64)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_mask = offs_g < G
    d_mask = offs_d < head_dim
    heads = h * G + offs_g

    q = tl.load(
        q_ptr + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
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

    # The query sits at ctx - 1 and sees keys [lo, ctx); a padding row (ctx 0) gets an
    # empty range, so it never touches its page table row.
    ctx = tl.load(ctx_ptr + b)
    if USE_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    else:
        lo = ctx * 0
    # Split boundaries fall on tile multiples, so only a split's last tile is partial.
    per_split = tl.cdiv(tl.cdiv(ctx - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, ctx)

    if SINK_IN_LOOP:
        # Starting the running softmax at the sink adds exp(sink - m) to its denominator.
        m_i = tl.load(sinks_ptr + heads, mask=g_mask, other=0.0).to(tl.float32)
        l_i = tl.full([BLOCK_G], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_G], NO_SCORE, tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)

    table_row = table_ptr + b64 * stride_tb
    for tile in range(start, end, BLOCK_N):
        tok = tile + offs_n
        n_mask = tok < end
        page = tl.load(table_row + tok // page_size, mask=n_mask, other=0).to(tl.int64)
        slot = tok % page_size
        kv_mask = d_mask[:, None] & n_mask[None, :]
        k_off = page * stride_kp + slot * stride_ks + h * stride_kh
        k = tl.load(k_ptr + k_off[None, :] + offs_d[:, None], mask=kv_mask, other=0.0)
        if KV_FP8:
            k = dequantize_e4m3(k, k_scale, q.dtype)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * scale  # [BLOCK_G, BLOCK_N]
        if USE_SOFTCAP:
            s = soft_cap(s, softcap)
        s = tl.where(n_mask[None, :], s, float("-inf"))

        v_off = page * stride_vp + slot * stride_vs + h * stride_vh
        v_ptrs = v_ptr + v_off[:, None] + offs_d[None, :]
        v_mask = n_mask[:, None] & d_mask[None, :]
        m_i, l_i, acc = fold_tile(
            s, v_ptrs, v_mask, m_i, l_i, acc, UPCAST, PRECISION, v_scale, KV_FP8, q.dtype
        )

    if SPLIT:
        # Scratch is [B, Hq, num_splits] (+ [D] for acc), contiguous.
        row = (b64 * num_q_heads + heads) * num_splits + split
        tl.store(m_ptr + row, m_i, mask=g_mask)
        tl.store(l_ptr + row, l_i, mask=g_mask)
        tl.store(
            acc_ptr + row[:, None] * head_dim + offs_d[None, :],
            acc,
            mask=g_mask[:, None] & d_mask[None, :],
        )
    else:
        # l_i is 0 only for a padding row without sinks, whose acc is 0 too.
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(
            out_ptr + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None] & d_mask[None, :],
        )


@triton.jit
def _decode_combine_kernel(
    m_ptr,
    l_ptr,
    acc_ptr,
    sinks_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    num_q_heads,
    head_dim,
    num_splits,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_SINKS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_prologue(USE_PDL)
    b = tl.program_id(0)
    hq = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < head_dim

    row = (b.to(tl.int64) * num_q_heads + hq) * num_splits + offs_s
    m = tl.load(m_ptr + row, mask=s_mask, other=NO_SCORE)
    denom = tl.load(l_ptr + row, mask=s_mask, other=0.0)
    acc = tl.load(
        acc_ptr + row[:, None] * head_dim + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    m_max = tl.max(m, 0)
    if USE_SINKS:
        sink = tl.load(sinks_ptr + hq).to(tl.float32)
        m_max = tl.maximum(m_max, sink)
    # Splits that got no keys carry m = NO_SCORE, sum = 0, acc = 0 and weigh nothing.
    w = tl.exp(m - m_max)
    total = tl.sum(w * denom, 0)
    if USE_SINKS:
        total += tl.exp(sink - m_max)
    o = tl.sum(acc * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(
        out_ptr + b.to(tl.int64) * stride_ob + hq * stride_oh + offs_d,
        o.to(out_ptr.dtype.element_ty),
        mask=d_mask,
    )


# ----------------------------------------------------------------------------------------
# Host wrappers.
# ----------------------------------------------------------------------------------------


def default_num_splits(batch: int, num_kv_heads: int, max_context: int | None = None) -> int:
    """Splits of each request's keys so that batch x KV heads x splits fills the GPU.

    Splits only when there are fewer than two programs per SM of an H100/H200, and then aims
    at about four (more loads in flight for one long request); when the longest context is known,
    keeps at least a few hundred keys per split so the combine step stays cheap.
    """
    programs = max(1, batch * num_kv_heads)
    if programs >= _TARGET_PROGRAMS // 2:
        return 1  # two programs per SM already: splitting would only add the combine step
    splits = -(-_TARGET_PROGRAMS // programs)
    if max_context is not None:
        splits = min(splits, max(1, max_context // _MIN_KEYS_PER_SPLIT))
    return max(1, min(splits, _MAX_SPLITS))


def _tile_config(group: int, head_dim: int, elem_size: int) -> tuple[int, int, int]:
    """(BLOCK_G, BLOCK_D, BLOCK_N): query rows padded for tl.dot, padded head dim, key tile."""
    block_g = max(16, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    # About 16 KiB per K (or V) tile keeps two pipeline stages well inside shared memory.
    block_n = (16 * 1024) // (block_d * elem_size)
    return block_g, block_d, max(16, min(64, block_n))


def _check_inner_contiguous(*tensors: torch.Tensor) -> None:
    """The kernels step by strides over every dimension but the last, which must be dense."""
    for t in tensors:
        if t.stride(-1) != 1:
            raise ValueError(f"tensor of shape {tuple(t.shape)} is not contiguous in its last dim")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of each request's one new query token over its paged keys (Triton).

    Args:
        q: [B, Hq, D] queries; the query of request b sits at position context_lens[b] - 1.
        k_cache, v_cache: [num_pages, page_size, Hkv, D], same dtype as q (float32,
            bfloat16 or float16) or float8_e4m3fn; the current token's key and value are
            already written.
        page_table: int32 [B, W]; token j of request b lives in page page_table[b, j //
            page_size] at offset j % page_size.
        context_lens: int32 [B]; keys of each request including the current token. A row
            with 0 is batch padding: it gets zeros and its page table row is never read.
        scale: factor applied to q·k.
        sliding_window: if set, the query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.
        sinks: optional float32 [Hq]: a learned logit per head that joins the softmax
            denominator only (gpt-oss attention sinks).
        num_splits: parts each request's key range is cut into (split-K); a plain int so a
            CUDA graph replays a fixed grid. Defaults to `default_num_splits(B, Hkv)`.
        out: optional [B, Hq, D] buffer to write into.
        k_scale, v_scale: float32 [1] per-tensor scales of an FP8 cache (None: 1.0; pass
            the cache's own tensors when capturing a CUDA graph); other caches ignore them.

    Returns:
        [B, Hq, D] in q's dtype (`out` if given). Safe to capture in a CUDA graph.
    """
    batch, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads do not group over {num_kv_heads} KV heads")
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads)
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    _check_inner_contiguous(k_cache, v_cache, page_table, out)
    # Head dim, page size and split count are runtime arguments: one compiled kernel per
    # padded head width, group size and dtype serves every page size and split count.
    group = num_q_heads // num_kv_heads
    block_g, block_d, block_n = _tile_config(group, head_dim, q.element_size())
    # tl.dot of bfloat16 is wrong in the interpreter: upcast there (see backend.py).
    upcast = interpreting() and q.dtype == torch.bfloat16
    precision = "ieee" if upcast or q.dtype == torch.float32 else "tf32"

    if num_splits > 1:
        m = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        denom = torch.empty_like(m)
        acc = torch.empty(
            batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device
        )
    else:
        m = denom = acc = out  # unused by the single-split kernel
    kv_fp8 = is_fp8(k_cache)
    if kv_fp8:
        k_scale, v_scale = kv_scale(k_scale, q), kv_scale(v_scale, q)
        k_cache, v_cache = kernel_view(k_cache), kernel_view(v_cache)
    else:
        k_scale = v_scale = q  # not read
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        page_table,
        context_lens,
        sinks.contiguous() if sinks is not None else q,
        out,
        m,
        denom,
        acc,
        k_scale,
        v_scale,
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
        num_q_heads,
        head_dim,
        page_size,
        num_splits,
        G=group,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        SPLIT=num_splits > 1,
        USE_WINDOW=sliding_window is not None,
        USE_SOFTCAP=softcap is not None,
        USE_SINKS=sinks is not None,
        SINK_IN_LOOP=sinks is not None and num_splits == 1,
        UPCAST=upcast,
        PRECISION=precision,
        KV_FP8=kv_fp8,
        num_warps=4,
        num_stages=2,
        **pdl_launch(q),
    )
    if num_splits > 1:
        _decode_combine_kernel[(batch, num_q_heads)](
            m,
            denom,
            acc,
            sinks if sinks is not None else m,
            out,
            out.stride(0),
            out.stride(1),
            num_q_heads,
            head_dim,
            num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=block_d,
            USE_SINKS=sinks is not None,
            num_warps=4,
            **pdl_launch(q),
        )
    return out
