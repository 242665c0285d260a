"""Attention over the paged KV cache, for ragged batches: the reference.

`paged_attention_reference` defines what attention computes and is the CPU path of
`max_kernels.paged_attention` (the dispatch, in `max_kernels.ops`); the Triton kernels
(`decode_attention`, `prefill_attention`) must match it, and their own references are this
one read request by request in float32 (`paged_attention_reference_per_request`).

The reference gathers each request's keys and values from its pages into a padded batch
and calls torch's scaled_dot_product_attention with an explicit mask (causal, optional
sliding window; a query may see keys past its own position where `layout.key_limit`
says so). Decoding requests and prefilling requests are handled as two groups so
that one long prompt chunk does not pad every decoding request to its length. No Python
loop runs over requests: index tensors are built once per step and reused by every layer.

An FP8 (e4m3) cache holds codes with a float32 scale per tensor (`k_scale`, `v_scale`):
writes quantize, reads decode into q's dtype (`max_kernels.fp8_kv_cache`). A cache of q's
dtype takes the paths above unchanged and ignores the scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from max_kernels import cpu_decode_attention
from max_kernels.fp8_kv_cache import dequantize_kv, is_fp8, quantize_kv
from max_kernels.ragged_layout import RaggedLayout


def write_kv_cache_reference(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Stores the step's new keys and values [T, Hkv, D] at their cache slots; into an FP8
    cache quantized by `k_scale` / `v_scale` (None: 1.0)."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    if is_fp8(k_cache):
        # Copied as bytes: index_copy_ has no float8 kernel on the CPU.
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        k = quantize_kv(k, k_scale).view(torch.uint8)
        v = quantize_kv(v, v_scale).view(torch.uint8)
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, layout.slot_mapping, k)
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, layout.slot_mapping, v)


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the step's queries over their requests' cached keys and values.

    Args:
        q: [T, Hq, D] queries of the step's new tokens, ragged as `layout` says.
        k_cache, v_cache: [num_pages, page_size, Hkv, D], in q's dtype or float8_e4m3fn;
            this step's keys and values must already be written (see `write_kv_cache_reference`).
        layout: the step's ragged layout.
        scale: factor applied to q·k.
        sliding_window: if set, a query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.
        sinks: optional float32 [Hq], a learned logit per head that joins each softmax's
            denominator (gpt-oss).
        k_scale, v_scale: float32 [1] per-tensor scales of an FP8 cache (None: 1.0).

    Returns:
        [T, Hq, D] attention output, in q's dtype.
    """
    kv_scales = (k_scale, v_scale) if is_fp8(k_cache) else None
    nd = layout.num_decode
    # Decoding requests come first with one token each, so their rows are [0, nd).
    groups = []
    if nd > 0:
        groups.append(("decode", 0, nd, 0, nd))
    if nd < layout.num_requests:
        groups.append(("prefill", nd, layout.num_requests, nd, q.shape[0]))
    out = torch.empty_like(q) if len(groups) > 1 else None  # one group: its result is the output
    # bfloat16 decode rows on an AVX2 CPU: our kernel reads the cache in place.
    native_decode = softcap is None and sinks is None and kv_scales is None and cpu_decode_attention.takes(q, k_cache)
    for name, r0, r1, t0, t1 in groups:
        index = layout.cached((name, "index"), lambda r0=r0, r1=r1, t0=t0, t1=t1: _GroupIndex(layout, r0, r1, t0, t1))
        if name == "decode" and native_decode:
            lo, hi = layout.cached((name, "bounds", sliding_window), lambda index=index: index.key_bounds(sliding_window))
            o = cpu_decode_attention.decode_attention(q[t0:t1], k_cache, v_cache, index.kv_slots, lo, hi, scale)
        else:
            mask = layout.cached(
                (name, "mask", sliding_window), lambda index=index: index.mask(sliding_window)
            )
            o = _group_attention(q[t0:t1], k_cache, v_cache, index, mask, scale, softcap, sinks, kv_scales)
        if out is None:
            return o
        out[t0:t1] = o
    return out if out is not None else torch.empty_like(q)


def gather_request_kv(
    cache: torch.Tensor,
    pages: torch.Tensor,
    n: int,
    scale: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The first `n` tokens [n, Hkv, D] of one request, from its row of the page table;
    from an FP8 cache, decoded with its `scale` into `dtype`."""
    page_size = cache.shape[1]
    used = pages[: -(-n // page_size)].long()
    kv = cache[used].reshape(-1, *cache.shape[2:])[:n]
    if is_fp8(cache):
        return dequantize_kv(kv, scale, dtype or torch.float32)
    return kv


def paged_attention_reference_per_request(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
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
    """`paged_attention_reference` in float32, one request at a time, on the Triton kernels'
    arguments: the references of `decode_attention` and `prefill_attention`.

    Each request's keys and values are gathered from its pages alone (an FP8 cache's decoded
    into q's dtype, as the kernels decode them), so slots a request does not own are never
    read; a request without keys (context 0, batch padding) gets zeros. Computed in float32
    whatever the inputs' dtype, so a kernel is measured against one rounding of the result.

    Args:
        q: [T, Hq, D]; request b's new tokens are rows query_start[b]:query_start[b+1].
        k_cache, v_cache: [num_pages, page_size, Hkv, D], in q's dtype or float8_e4m3fn.
        page_table: int32 [B, W], request b's pages in order.
        query_start: int [B + 1]; context_lens: int [B], keys of request b, new ones included.
        scale, sliding_window, softcap, sinks, k_scale, v_scale: as `paged_attention_reference`.
        out: optional [T, Hq, D] buffer (of any float dtype) to write into.
        key_limit: optional int [T], the last key position each token may see
            (`RaggedLayout.key_limit`); None: causal.

    Returns:
        [T, Hq, D] in q's dtype, or `out`.
    """
    result = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    starts = query_start.tolist()
    for b, n in enumerate(context_lens.tolist()):
        q0, q1 = starts[b], starts[b + 1]
        if n == 0 or q1 == q0:
            continue
        # The request's keys as a cache of one page of n slots.
        k = gather_request_kv(k_cache, page_table[b], n, k_scale, q.dtype).float()[None]
        v = gather_request_kv(v_cache, page_table[b], n, v_scale, q.dtype).float()[None]
        layout = _one_request_layout(q1 - q0, n, q.device)
        if key_limit is not None:
            layout.key_limit = key_limit[q0:q1]
        result[q0:q1] = paged_attention_reference(q[q0:q1].float(), k, v, layout, scale, sliding_window, softcap, sinks)
    if out is None:
        return result.to(q.dtype)
    out.copy_(result)
    return out


def _one_request_layout(num_new: int, context: int, device: torch.device) -> RaggedLayout:
    """The layout of one request whose `context` keys fill page 0 and whose last `num_new`
    are this step's."""
    return RaggedLayout(
        query_start=torch.tensor([0, num_new], dtype=torch.int32, device=device),
        context_lens=torch.tensor([context], dtype=torch.int32, device=device),
        page_table=torch.zeros(1, 1, dtype=torch.int32, device=device),
        slot_mapping=torch.arange(context - num_new, context, device=device),
        page_size=context,
        num_decode=1 if num_new == 1 else 0,
        query_lens=[num_new],
        context_lens_host=[context],
    )


class _GroupIndex:
    """Index tensors that pad a group of requests [r0, r1) into [b, Qmax] x [b, Lmax]."""

    def __init__(self, layout: RaggedLayout, r0: int, r1: int, t0: int, t1: int) -> None:
        device = layout.page_table.device
        q_lens = layout.query_lens[r0:r1]
        ctx = layout.context_lens_host[r0:r1]
        self.batch = r1 - r0
        self.max_q = max(q_lens)
        self.max_kv = max(ctx)
        page_size = layout.page_size
        # Flat cache slot of key j of each request: page_table[b, j // ps] * ps + j % ps.
        j = torch.arange(self.max_kv, device=device)
        pages = layout.page_table[r0:r1, j // page_size].long()
        self.kv_slots = pages * page_size + (j % page_size)
        q_lens_t = torch.tensor(q_lens, device=device)
        ctx_t = layout.context_lens[r0:r1].long()
        i = torch.arange(self.max_q, device=device)
        # Absolute position of padded query i of request b.
        self.q_pos = (ctx_t - q_lens_t)[:, None] + i[None, :]
        self.q_valid = i[None, :] < q_lens_t[:, None]
        self.key_pos = j
        if self.max_q > 1:
            # Row of the group's flat tokens -> (request, slot in the padded query block).
            self.token_batch = torch.repeat_interleave(
                torch.arange(self.batch, device=device), q_lens_t
            )
            starts = torch.cumsum(q_lens_t, 0) - q_lens_t
            self.token_slot = torch.arange(int(sum(q_lens)), device=device) - starts[
                self.token_batch
            ]
        # The last key each padded query may see (rows t0:t1 of the step): itself (causal),
        # or further where the layout says so (an image's tokens see the whole image).
        self.q_limit = self.q_pos
        if layout.key_limit is not None:
            limit = layout.key_limit[t0:t1].long()
            if self.max_q == 1:
                self.q_limit = limit.view(self.batch, 1)
            else:
                self.q_limit = self.q_pos.clone()
                self.q_limit[self.token_batch, self.token_slot] = limit

    def mask(self, sliding_window: int | None) -> torch.Tensor:
        """[b, 1, Qmax, Lmax] boolean mask: True where a query may attend to a key."""
        q_pos = self.q_pos[:, :, None]
        k_pos = self.key_pos[None, None, :]
        allowed = k_pos <= self.q_limit[:, :, None]
        if sliding_window is not None:
            allowed &= k_pos > q_pos - sliding_window
        # Padding queries attend to key 0 only, so that no softmax row is empty (NaN).
        allowed |= (~self.q_valid[:, :, None]) & (k_pos == 0)
        return allowed[:, None]

    def key_bounds(self, sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """For a group of one query a request (decode): the first and last key (inclusive)
        each query sees, as int32 [b] each: what `mask` allows, as a range."""
        q_pos = self.q_pos[:, 0]
        hi = self.q_limit[:, 0]
        lo = torch.zeros_like(hi) if sliding_window is None else (q_pos - sliding_window + 1).clamp(min=0)
        return lo.to(torch.int32), hi.to(torch.int32)


def _group_attention(q, k_cache, v_cache, index: _GroupIndex, mask, scale, softcap, sinks, kv_scales):
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[2]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    # index_select on the flat slots, not advanced indexing: the same values, ~6x faster on
    # the CPU (1,000 keys of SmolLM2: 16 against 101 us a gather).
    slots = index.kv_slots.reshape(-1)
    k = torch.index_select(k_cache.view(num_slots, hkv, d), 0, slots).view(*index.kv_slots.shape, hkv, d)  # [b, L, Hkv, D]
    v = torch.index_select(v_cache.view(num_slots, hkv, d), 0, slots).view(*index.kv_slots.shape, hkv, d)
    if kv_scales is not None:  # an FP8 cache: its codes read back in q's dtype
        k = dequantize_kv(k, kv_scales[0], q.dtype)
        v = dequantize_kv(v, kv_scales[1], q.dtype)
    if index.max_q == 1:
        qp = q.view(index.batch, 1, hq, d)
    else:
        qp = q.new_zeros(index.batch, index.max_q, hq, d)
        qp[index.token_batch, index.token_slot] = q
    qp, k, v = qp.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if index.max_q == 1 and hq != hkv and softcap is None and sinks is None and _grouped_decode(q):
        # One query token per request: the query heads that share a KV head become query
        # rows of that head, [b, Hkv, Hq/Hkv, D], and SDPA runs without `enable_gqa`,
        # which on the CPU is several times slower at decode shapes. Equal up to rounding
        # (not bit for bit), so float32, the verification reference, keeps the path above.
        o = F.scaled_dot_product_attention(
            qp.reshape(index.batch, hkv, hq // hkv, d), k, v, attn_mask=mask, scale=scale
        )
        return o.reshape(index.batch, hq, d)
    if softcap is None and sinks is None:
        o = F.scaled_dot_product_attention(
            qp, k, v, attn_mask=mask, scale=scale, enable_gqa=hq != hkv
        )
    else:
        o = _explicit_attention(qp, k, v, mask, scale, softcap, sinks)
    o = o.transpose(1, 2)  # [b, Qmax, Hq, D]
    if index.max_q == 1:
        return o.reshape(index.batch, hq, d)
    return o[index.token_batch, index.token_slot]


def _grouped_decode(q: torch.Tensor) -> bool:
    """Whether decode attention groups query heads by KV head: on the CPU, below float32."""
    return q.device.type == "cpu" and q.dtype != torch.float32


def _explicit_attention(q, k, v, mask, scale, softcap, sinks):
    """Attention with tanh soft-capping of the scores (Gemma 2 style) and/or a sink logit
    per head in the softmax's denominator (gpt-oss), in float32."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        sink = sinks.float()[None, :, None, None].expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.matmul(probs, v.float()).to(q.dtype)
