"""Attention over the paged KV cache, for ragged batches: the dispatch and the reference.

On CUDA, `paged_attention` runs the Triton kernels: the leading decode rows (one query token
each) through the split-K decode kernel, the rest through the ragged prefill kernel; both
read keys and values in place from their pages. Elsewhere it runs the reference.

The reference gathers each request's keys and values from its pages into a padded batch
and calls torch's scaled_dot_product_attention with an explicit mask (causal, optional
sliding window). Decoding requests and prefilling requests are handled as two groups so
that one long prompt chunk does not pad every decoding request to its length. No Python
loop runs over requests: index tensors are built once per step and reused by every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from max_kernels.backend import use_triton
from max_kernels.decode_attention import decode_attention
from max_kernels.prefill_attention import prefill_attention
from max_kernels.ragged_layout import RaggedLayout


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
) -> None:
    """Stores the step's new keys and values [T, Hkv, D] at their cache slots (reference;
    on the GPU the rotary kernel writes them)."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, layout.slot_mapping, k)
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, layout.slot_mapping, v)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the step's queries over their requests' cached keys and values.

    Args:
        q: [T, Hq, D] queries of the step's new tokens, ragged as `layout` says.
        k_cache, v_cache: [num_pages, page_size, Hkv, D]; this step's keys and values
            must already be written.
        layout: the step's ragged layout.
        scale: factor applied to q·k.
        sliding_window: if set, a query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.
        sinks: optional float32 [Hq], a learned logit per head that joins each softmax's
            denominator (gpt-oss).

    Returns:
        [T, Hq, D] attention output, in q's dtype.
    """
    if not use_triton(q):
        return paged_attention_reference(q, k_cache, v_cache, layout, scale, sliding_window, softcap, sinks)
    out = torch.empty_like(q)
    nd = layout.num_decode
    options = dict(sliding_window=sliding_window, softcap=softcap, sinks=sinks)
    if nd > 0:
        decode_attention(
            q[:nd],
            k_cache,
            v_cache,
            layout.page_table[:nd],
            layout.context_lens[:nd],
            scale,
            num_splits=layout.num_splits,
            out=out[:nd],
            **options,
        )
    if nd < layout.num_requests:
        t0 = layout.num_decode  # decode rows hold one token each
        query_start = layout.cached(
            ("prefill", "query_start"), lambda: layout.query_start[nd:] - layout.query_start[nd]
        )
        prefill_attention(
            q[t0:],
            k_cache,
            v_cache,
            layout.page_table[nd:],
            query_start,
            layout.context_lens[nd:],
            layout.max_query_len,
            scale,
            out=out[t0:],
            **options,
        )
    return out


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: RaggedLayout,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of the step's queries over their requests' cached keys and values.

    Args:
        q: [T, Hq, D] queries of the step's new tokens, ragged as `layout` says.
        k_cache, v_cache: [num_pages, page_size, Hkv, D]; this step's keys and values
            must already be written (see `write_kv_cache`).
        layout: the step's ragged layout.
        scale: factor applied to q·k.
        sliding_window: if set, a query at position p sees keys at positions > p - window.
        softcap: if set, scores become softcap * tanh(scores / softcap) before the softmax.

    Returns:
        [T, Hq, D] attention output, in q's dtype.
    """
    out = torch.empty_like(q)
    nd = layout.num_decode
    # Decoding requests come first with one token each, so their rows are [0, nd).
    groups = []
    if nd > 0:
        groups.append(("decode", 0, nd, 0, nd))
    if nd < layout.num_requests:
        groups.append(("prefill", nd, layout.num_requests, nd, q.shape[0]))
    for name, r0, r1, t0, t1 in groups:
        index = layout.cached((name, "index"), lambda r0=r0, r1=r1: _GroupIndex(layout, r0, r1))
        mask = layout.cached(
            (name, "mask", sliding_window), lambda index=index: index.mask(sliding_window)
        )
        out[t0:t1] = _group_attention(q[t0:t1], k_cache, v_cache, index, mask, scale, softcap, sinks)
    return out


class _GroupIndex:
    """Index tensors that pad a group of requests [r0, r1) into [b, Qmax] x [b, Lmax]."""

    def __init__(self, layout: RaggedLayout, r0: int, r1: int) -> None:
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

    def mask(self, sliding_window: int | None) -> torch.Tensor:
        """[b, 1, Qmax, Lmax] boolean mask: True where a query may attend to a key."""
        q_pos = self.q_pos[:, :, None]
        k_pos = self.key_pos[None, None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= k_pos > q_pos - sliding_window
        # Padding queries attend to key 0 only, so that no softmax row is empty (NaN).
        allowed |= (~self.q_valid[:, :, None]) & (k_pos == 0)
        return allowed[:, None]


def _group_attention(q, k_cache, v_cache, index: _GroupIndex, mask, scale, softcap, sinks):
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[2]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k = k_cache.view(num_slots, hkv, d)[index.kv_slots]  # [b, L, Hkv, D]
    v = v_cache.view(num_slots, hkv, d)[index.kv_slots]
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
