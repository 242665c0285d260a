"""The paged attention reference against plain causal attention over unpaged tensors."""

import math

import pytest
import torch

from max_kernels import RaggedLayout, cpu_decode_attention, paged_attention, write_kv_cache
from max_kernels.paged_attention import (
    paged_attention_reference,
    paged_attention_reference_per_request,
)


def _naive(q, k, v, q_pos, scale, window=None, softcap=None, limit=None):
    """Causal attention of queries at positions q_pos over keys 0..len(k)-1 (up to
    `limit` instead of q_pos where given)."""
    hq, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    kpos = torch.arange(k.shape[0])
    allowed = kpos[None, :] <= (q_pos if limit is None else limit)[:, None]
    if window is not None:
        allowed &= kpos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~allowed[None], -math.inf)
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v)


def _run(cached, new, page_size=4, hq=4, hkv=2, d=8, window=None, softcap=None, seed=0, dtype=torch.float32, spans=None):
    """cached[b] tokens already in cache, new[b] tokens this step (one-token requests first);
    spans[b] (optional): request b's blocks (start, end) of positions that see each other."""
    g = torch.Generator().manual_seed(seed)
    num_pages = 64
    k_cache = torch.zeros(num_pages, page_size, hkv, d)
    v_cache = torch.zeros(num_pages, page_size, hkv, d)
    perm = torch.randperm(num_pages, generator=g).tolist()  # scattered pages
    tables, full_k, full_v, slots, q_list, q_pos = [], [], [], [], [], []
    for c, n in zip(cached, new):
        total = c + n
        pages = [perm.pop() for _ in range(-(-total // page_size))]
        tables.append(pages)
        k = torch.randn(total, hkv, d, generator=g)
        v = torch.randn(total, hkv, d, generator=g)
        full_k.append(k)
        full_v.append(v)
        for p in range(c):  # the cached prefix is already stored
            k_cache[pages[p // page_size], p % page_size] = k[p]
            v_cache[pages[p // page_size], p % page_size] = v[p]
        slots += [pages[p // page_size] * page_size + p % page_size for p in range(c, total)]
        q_list.append(torch.randn(n, hq, d, generator=g))
        q_pos.append(torch.arange(c, total))
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    cu = torch.tensor([0, *torch.cumsum(torch.tensor(new), 0).tolist()], dtype=torch.int32)
    ctx = [c + n for c, n in zip(cached, new)]
    layout = RaggedLayout(
        query_start=cu,
        context_lens=torch.tensor(ctx, dtype=torch.int32),
        page_table=table,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        page_size=page_size,
        num_decode=sum(1 for n in new if n == 1) if new[0] == 1 else 0,
        query_lens=list(new),
        context_lens_host=ctx,
    )
    new_k = torch.cat([k[c:] for k, c in zip(full_k, cached)])
    new_v = torch.cat([v[c:] for v, c in zip(full_v, cached)])
    k_cache, v_cache = k_cache.to(dtype), v_cache.to(dtype)
    write_kv_cache(new_k.to(dtype), new_v.to(dtype), k_cache, v_cache, layout)
    q = torch.cat(q_list).to(dtype)
    scale = d**-0.5
    limits = [None] * len(new)
    if spans is not None:
        limits = [pos.clone() for pos in q_pos]
        for limit, pos, blocks in zip(limits, q_pos, spans):
            for a, z in blocks:
                limit[(pos >= a) & (pos < z)] = z - 1
        layout.key_limit = torch.cat(limits)
    out = paged_attention(q, k_cache, v_cache, layout, scale, window, softcap)
    expected = torch.cat(
        [
            _naive(qq, k, v, pos, scale, window, softcap, limit)
            for qq, k, v, pos, limit in zip(q_list, full_k, full_v, q_pos, limits)
        ]
    )
    return out, expected


@pytest.mark.parametrize(
    "cached,new",
    [
        ([0], [7]),  # one prefill
        ([5, 9, 2], [1, 1, 1]),  # pure decode, different lengths
        ([3, 11], [1, 1]),
        ([6, 0, 4], [1, 9, 5]),  # decodes first, then prefills and a chunk continuation
        ([0, 0], [1, 13]),  # a one-token prompt alongside a long one
    ],
)
def test_matches_naive_attention(cached, new):
    out, expected = _run(cached, new)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_key_limits_let_blocks_see_ahead(window):
    """Tokens of a block (an image) see the whole block, in decode and prefill groups,
    within the sliding window's reach backwards; the others stay causal."""
    spans = [[], [(2, 6), (7, 9)], [(0, 5)]]
    out, expected = _run([6, 0, 3], [1, 10, 5], window=window, spans=spans)
    causal, _ = _run([6, 0, 3], [1, 10, 5], window=window)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, causal)


def test_sliding_window_and_softcap():
    out, expected = _run([10, 3], [1, 8], window=4, softcap=5.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("hq,hkv,window", [(6, 2, None), (8, 1, 3), (4, 4, None)])
def test_bfloat16_decode_with_grouped_query_heads(hq, hkv, window, native, monkeypatch):
    """Below float32 the CPU decode groups the query heads of a KV head as rows of one
    attention (no `enable_gqa`), or runs our C kernel where the CPU has AVX2
    (`cpu_decode_attention`); either must still match attention over the float values."""
    if native and not cpu_decode_attention.available():
        pytest.skip("no AVX2/FMA or no C compiler here")
    monkeypatch.setattr(cpu_decode_attention, "available", lambda native=native: native)
    out, expected = _run([5, 9, 2], [1, 1, 1], hq=hq, hkv=hkv, window=window, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_index_tensors_are_built_once_per_step():
    """Layers share the step's gather indices and masks instead of rebuilding them."""
    g = torch.Generator().manual_seed(1)
    layout = RaggedLayout(
        query_start=torch.tensor([0, 1, 4], dtype=torch.int32),
        context_lens=torch.tensor([3, 3], dtype=torch.int32),
        page_table=torch.tensor([[0], [1]], dtype=torch.int32),
        slot_mapping=torch.tensor([2, 4, 5, 6]),
        page_size=4,
        num_decode=1,
        query_lens=[1, 3],
        context_lens_host=[3, 3],
    )
    cache = torch.zeros(2, 4, 1, 8)
    q = torch.randn(4, 2, 8, generator=g)
    paged_attention(q, cache, cache, layout, 0.3)
    keys = set(layout._cache)
    paged_attention(q, cache, cache, layout, 0.3)
    assert set(layout._cache) == keys
    assert ("decode", "index") in keys and ("prefill", "index") in keys


@pytest.mark.parametrize("options", [{}, dict(sliding_window=4, softcap=5.0, sinks=torch.tensor([0.5, -1.0, 2.0, 0.0]))])
def test_the_kernels_reference_is_the_step_reference_request_by_request(options):
    """`paged_attention_reference_per_request` (what the decode and prefill kernels are
    checked against) gives the step reference's numbers, one request at a time; a request
    without keys (batch padding) gets zeros."""
    g = torch.Generator().manual_seed(2)
    ctx, new = [6, 11, 0, 9], [1, 1, 0, 5]
    page_table = torch.tensor([[3, 0, 0], [1, 4, 6], [0, 0, 0], [2, 5, 7]], dtype=torch.int32)
    k_cache, v_cache = torch.randn(2, 8, 4, 2, 8, generator=g)
    starts = torch.tensor([0, 1, 2, 2, 7], dtype=torch.int32)
    q = torch.randn(7, 4, 8, generator=g)
    per_request = paged_attention_reference_per_request(
        q, k_cache, v_cache, page_table, starts, torch.tensor(ctx, dtype=torch.int32), 0.3, **options
    )
    live = [0, 1, 3]
    layout = RaggedLayout(
        query_start=torch.tensor([0, 1, 2, 7], dtype=torch.int32),
        context_lens=torch.tensor([ctx[b] for b in live], dtype=torch.int32),
        page_table=page_table[live],
        slot_mapping=torch.zeros(7, dtype=torch.int64),
        page_size=4,
        num_decode=2,
        query_lens=[new[b] for b in live],
        context_lens_host=[ctx[b] for b in live],
    )
    step = paged_attention_reference(q, k_cache, v_cache, layout, 0.3, **options)
    torch.testing.assert_close(per_request, step, rtol=1e-6, atol=1e-6)
