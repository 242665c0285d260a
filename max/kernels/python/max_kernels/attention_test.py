"""Decode and prefill attention kernels (Triton interpreter) against their torch references,
and the references against plain causal attention over unpaged keys."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
from dataclasses import dataclass

import pytest
import torch

from max_kernels.decode_attention import (
    decode_attention,
    decode_attention_reference,
    default_num_splits,
)
from max_kernels.prefill_attention import (
    prefill_attention,
    prefill_attention_reference,
)

# Kernels against references computed in float32 from the same inputs: the references
# round once (to the output dtype); the kernels also accumulate in a different order.
TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
DTYPES = list(TOLERANCES)
# The float32 references against float64 plain attention.
REF_TOL = dict(atol=1e-5, rtol=1e-5)


@dataclass
class Batch:
    """A ragged batch whose keys and values sit in scattered pages of a paged cache."""

    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor
    query_start: torch.Tensor
    context_lens: torch.Tensor
    keys: list[torch.Tensor]  # per request [n, Hkv, D], unpaged
    values: list[torch.Tensor]
    new: list[int]
    scale: float


def _batch(cached, new, hq=4, hkv=1, d=64, page_size=16, dtype=torch.float32, seed=0):
    """Request b has cached[b] keys from earlier steps and new[b] tokens this step.

    Every cache slot no request owns, and every unused page-table entry, holds NaN, so a
    kernel that reads past a request's context poisons its output.
    """
    g = torch.Generator().manual_seed(seed)
    pages_needed = [-(-(c + n) // page_size) for c, n in zip(cached, new)]
    num_pages = sum(pages_needed) + 2
    nan_page = num_pages - 1
    k_cache = torch.full((num_pages, page_size, hkv, d), math.nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, math.nan)
    perm = torch.randperm(num_pages - 1, generator=g).tolist()  # scattered pages
    width = max(max(pages_needed), 1) + 1
    table = torch.full((len(new), width), nan_page, dtype=torch.int32)
    keys, values = [], []
    for b, (c, n) in enumerate(zip(cached, new)):
        total = c + n
        pages = [perm.pop() for _ in range(pages_needed[b])]
        table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        k = torch.randn(total, hkv, d, generator=g).to(dtype)
        v = torch.randn(total, hkv, d, generator=g).to(dtype)
        for j in range(total):
            k_cache[pages[j // page_size], j % page_size] = k[j]
            v_cache[pages[j // page_size], j % page_size] = v[j]
        keys.append(k)
        values.append(v)
    q = torch.randn(sum(new), hq, d, generator=g).to(dtype)
    starts = [0]
    for n in new:
        starts.append(starts[-1] + n)
    return Batch(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        page_table=table,
        query_start=torch.tensor(starts, dtype=torch.int32),
        context_lens=torch.tensor([c + n for c, n in zip(cached, new)], dtype=torch.int32),
        keys=keys,
        values=values,
        new=list(new),
        scale=d**-0.5,
    )


def _decode_batch(contexts, **kw):
    """One query per request at position context - 1; a context of 0 is a padding row."""
    batch = _batch([max(c - 1, 0) for c in contexts], [1 if c else 0 for c in contexts], **kw)
    # Padding rows still own a (never read) query row, as in a CUDA-graph bucket.
    hq, d = batch.q.shape[1:]
    g = torch.Generator().manual_seed(len(contexts))
    q = torch.randn(len(contexts), hq, d, generator=g).to(batch.q.dtype)
    live = [i for i, c in enumerate(contexts) if c]
    q[live] = batch.q
    batch.q = q
    batch.query_start = torch.arange(len(contexts) + 1, dtype=torch.int32)
    return batch


def _naive(q, k, v, first_pos, scale, sliding_window=None, softcap=None, sinks=None, key_limit=None):
    """Causal attention, in float64, of queries at first_pos.. over unpaged keys 0..len(k)-1
    (each query up to its `key_limit` instead, where given)."""
    hq, hkv = q.shape[1], k.shape[1]
    k = k.double().repeat_interleave(hq // hkv, dim=1)
    v = v.double().repeat_interleave(hq // hkv, dim=1)
    q_pos = torch.arange(first_pos, first_pos + q.shape[0])
    k_pos = torch.arange(k.shape[0])
    out = torch.zeros(q.shape, dtype=torch.float64)
    for h in range(hq):
        s = (q[:, h].double() @ k[:, h].T) * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        seen = k_pos[None, :] <= (q_pos if key_limit is None else key_limit)[:, None]
        if sliding_window is not None:
            seen &= k_pos[None, :] > q_pos[:, None] - sliding_window
        s = s.masked_fill(~seen, -math.inf)
        m = s.max(dim=1, keepdim=True).values
        if sinks is not None:
            m = torch.maximum(m, sinks[h].double())
        w = torch.exp(s - m)
        denom = w.sum(dim=1, keepdim=True)
        if sinks is not None:
            denom = denom + torch.exp(sinks[h].double() - m)
        out[:, h] = (w / denom) @ v[:, h]
    return out


def _naive_batch(batch, **opts):
    """Expected [T, Hq, D] of every request's new tokens (padding rows: zeros)."""
    parts = []
    limits = opts.pop("key_limit", None)
    for k, v, n, q0 in zip(batch.keys, batch.values, batch.new, batch.query_start.tolist()):
        if n:
            limit = None if limits is None else limits[q0 : q0 + n]
            parts.append(_naive(batch.q[q0 : q0 + n], k, v, len(k) - n, batch.scale, key_limit=limit, **opts))
    return torch.cat(parts)


def _key_limits(batch, spans):
    """`key_limit` [T] of a batch: request b's new tokens inside one of its blocks spans[b]
    (start, end) see up to end - 1, the others up to themselves."""
    parts = []
    for k, n, blocks in zip(batch.keys, batch.new, spans):
        pos = torch.arange(len(k) - n, len(k))
        for start, end in blocks:
            pos = torch.where((pos >= start) & (pos < end), end - 1, pos)
        parts.append(pos)
    return torch.cat(parts)


def _sinks(hq, seed=7):
    return torch.randn(hq, generator=torch.Generator().manual_seed(seed)) * 2


def _run_decode(fn, batch, splits=None, **opts):
    out = torch.full_like(batch.q, math.nan)
    result = fn(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.page_table,
        batch.context_lens,
        batch.scale,
        num_splits=splits,
        out=out,
        **opts,
    )
    assert result is out
    return out


def _run_prefill(fn, batch, **opts):
    out = torch.full_like(batch.q, math.nan)
    result = fn(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.page_table,
        batch.query_start,
        batch.context_lens,
        max(batch.new),
        batch.scale,
        out=out,
        **opts,
    )
    assert result is out
    return out


OPTIONS = {
    "plain": {},
    "window": dict(sliding_window=24),
    "softcap": dict(softcap=5.0),
    "sinks": dict(sinks=_sinks(8)),
    "all": dict(sliding_window=16, softcap=5.0, sinks=_sinks(8)),
}


def _opts(name, hq):
    opts = dict(OPTIONS[name])
    if "sinks" in opts:
        opts["sinks"] = opts["sinks"][:hq].contiguous()
    return opts


# ---------------------------------------------------------------------------------------
# The references are the spec: check them against plain attention first.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", list(OPTIONS))
def test_decode_reference_matches_naive_attention(option):
    batch = _decode_batch([37, 0, 130, 1], hq=4, hkv=2)
    opts = _opts(option, 4)
    out = _run_decode(decode_attention_reference, batch, **opts)
    live = batch.context_lens > 0
    torch.testing.assert_close(out[live], _naive_batch(batch, **opts).float(), **REF_TOL)
    assert torch.all(out[~live] == 0)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_prefill_reference_matches_naive_attention(option):
    batch = _batch([30, 0, 5, 0], [1, 1, 40, 23], hq=4, hkv=2)
    opts = _opts(option, 4)
    out = _run_prefill(prefill_attention_reference, batch, **opts)
    torch.testing.assert_close(out, _naive_batch(batch, **opts).float(), **REF_TOL)


# ---------------------------------------------------------------------------------------
# Decode kernel.
# ---------------------------------------------------------------------------------------

DECODE_CASES = {
    # name: (contexts, layout kwargs, num_splits, option)
    "mqa_padding_one_token": ([37, 0, 130, 1], dict(hq=4, hkv=1), 1, "plain"),
    "mha": ([20, 65], dict(hq=2, hkv=2), 1, "plain"),
    "gqa4_page32_splits": ([70, 0, 9], dict(hq=8, hkv=2, page_size=32), 2, "plain"),
    "head_dim_80": ([50, 3], dict(hq=4, hkv=2, d=80), 1, "softcap"),
    # 200 keys over 13 pages; the 5-key request leaves splits 1..3 empty.
    "many_pages_empty_splits": ([5, 200, 0], dict(hq=4, hkv=1), 4, "plain"),
    "window_softcap_sinks": ([100, 7, 0], dict(hq=8, hkv=2), 1, "all"),
    "window_softcap_sinks_splits": ([100, 7, 0], dict(hq=8, hkv=2), 3, "all"),
    "sinks_splits": ([90, 0, 2], dict(hq=4, hkv=1), 3, "sinks"),
    # Pages of a multiple of the key tile: one page id per tile (PAGE_TILES).
    "page_tiles_page64": ([300, 0, 64, 129], dict(hq=8, hkv=2, page_size=64), 1, "plain"),
    "page_tiles_page128_splits": ([300, 0, 5, 257], dict(hq=4, hkv=1, page_size=128), 3, "softcap"),
    # A window starts mid-tile: the per-token page lookup again.
    "window_page64_splits": ([100, 7, 0], dict(hq=8, hkv=2, page_size=64), 2, "all"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_kernel_matches_reference(case, dtype):
    contexts, layout, splits, option = DECODE_CASES[case]
    batch = _decode_batch(contexts, dtype=dtype, **layout)
    opts = _opts(option, layout["hq"])
    out = _run_decode(decode_attention, batch, splits, **opts)
    expected = _run_decode(decode_attention_reference, batch, **opts)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])
    assert torch.all(out[batch.context_lens == 0] == 0)


def test_decode_kernel_default_splits():
    batch = _decode_batch([33, 0, 150], hq=4, hkv=2)
    out = decode_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.page_table, batch.context_lens, batch.scale
    )
    expected = _run_decode(decode_attention_reference, batch)
    torch.testing.assert_close(out, expected, **TOLERANCES[torch.float32])


def test_default_num_splits_fills_the_gpu_with_long_enough_splits():
    assert default_num_splits(1, 8) * 8 >= 4 * 132
    assert default_num_splits(1, 8, max_context=32768) * 8 >= 132
    assert default_num_splits(1, 8, max_context=300) == 1
    assert default_num_splits(64, 8) == 1
    assert default_num_splits(256, 8, max_context=1024) == 1
    assert 1 <= default_num_splits(0, 8) <= 128


# ---------------------------------------------------------------------------------------
# Prefill kernel.
# ---------------------------------------------------------------------------------------

PREFILL_CASES = {
    # name: (cached, new, layout kwargs, option)
    # Decodes mixed in, a chunk continuation, a fresh prompt, a request with no new tokens.
    "mixed_chunk_mqa": ([30, 0, 5, 12, 0], [1, 1, 40, 9, 0], dict(hq=4, hkv=1), "plain"),
    # 70 tokens x 4 heads = 280 rows: several query blocks, with key tiles skipped.
    "long_prompt_gqa4": ([0, 0], [1, 70], dict(hq=8, hkv=2), "plain"),
    "mha_page32": ([40], [33], dict(hq=2, hkv=2, page_size=32), "plain"),
    "head_dim_80_group3": ([16, 0], [20, 5], dict(hq=6, hkv=2, d=80), "softcap"),
    "window": ([50, 0], [30, 45], dict(hq=8, hkv=2), "window"),
    "window_softcap_sinks": ([50, 0], [30, 45], dict(hq=8, hkv=2), "all"),
    "sinks_one_token_prompts": ([0, 3, 0], [1, 1, 17], dict(hq=4, hkv=1), "sinks"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(PREFILL_CASES))
def test_prefill_kernel_matches_reference(case, dtype):
    cached, new, layout, option = PREFILL_CASES[case]
    batch = _batch(cached, new, dtype=dtype, **layout)
    opts = _opts(option, layout["hq"])
    out = _run_prefill(prefill_attention, batch, **opts)
    expected = _run_prefill(prefill_attention_reference, batch, **opts)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])


def test_prefill_of_single_tokens_equals_decode():
    """A step of one-token requests gives the same result through either kernel."""
    batch = _batch([12, 40, 0], [1, 1, 1], hq=4, hkv=2)
    out = _run_prefill(prefill_attention, batch, sliding_window=20)
    dec = _run_decode(decode_attention, batch, 2, sliding_window=20)
    torch.testing.assert_close(out, dec, atol=1e-5, rtol=1e-5)


# Blocks of positions that see each other (an image's tokens): one crossing query blocks of
# the long prompt, one in a chunk continuation that starts inside it, and a window shorter
# than a block.
LIMIT_CASES = {
    "long_prompt_gqa4": ([0, 0], [1, 70], dict(hq=8, hkv=2), [[], [(20, 50), (60, 69)]], "plain"),
    "chunk_inside_block_window": ([30, 6, 0], [1, 20, 25], dict(hq=4, hkv=1), [[], [(2, 14)], [(3, 20)]], "window"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(LIMIT_CASES))
def test_prefill_kernel_sees_ahead_where_the_key_limits_say(case, dtype):
    cached, new, layout, spans, option = LIMIT_CASES[case]
    batch = _batch(cached, new, dtype=dtype, **layout)
    opts = dict(_opts(option, layout["hq"]), key_limit=_key_limits(batch, spans))
    expected = _run_prefill(prefill_attention_reference, batch, **opts)
    if dtype == torch.float32:
        torch.testing.assert_close(expected, _naive_batch(batch, **dict(opts)).float(), **REF_TOL)
        causal = _run_prefill(prefill_attention_reference, batch, **_opts(option, layout["hq"]))
        assert not torch.allclose(expected, causal)
    torch.testing.assert_close(_run_prefill(prefill_attention, batch, **opts), expected, **TOLERANCES[dtype])
