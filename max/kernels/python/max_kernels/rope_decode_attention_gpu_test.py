"""The one-kernel decode step on a CUDA GPU at real sizes: against the three kernels it
replaces (rope + KV write, split attention, combine), eagerly and as a CUDA graph of
several layers, where programmatic dependent launch lets each kernel start early and the
arrival counters must be back at 0 for the next layer."""

import math

import pytest
import torch

from max_kernels import rope_decode_attention as fused
from max_kernels.decode_attention import decode_attention, default_num_splits
from max_kernels.rope_decode_attention import rope_decode_attention
from max_kernels.rotary_kv import rope_and_write_kv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOLERANCES = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=3e-3, rtol=3e-3)}


def _inputs(contexts, hq, hkv, d, page_size, dtype, seed=0):
    """(q, k, v, rows, cos, sin, k_cache, v_cache, slots, table, ctx) on CUDA; unowned slots
    and each new token's slot hold NaN."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    pages = [-(-c // page_size) for c in contexts]
    num_pages = sum(pages) + 2
    k_cache = torch.full((num_pages, page_size, hkv, d), math.nan, dtype=dtype, device="cuda")
    v_cache = torch.full_like(k_cache, math.nan)
    perm = torch.randperm(num_pages - 1, device="cuda", generator=g).tolist()
    table = torch.full((len(contexts), max(pages) + 1), num_pages - 1, dtype=torch.int32, device="cuda")
    slots = torch.full((len(contexts),), -1, dtype=torch.int64, device="cuda")
    for b, c in enumerate(contexts):
        own = [perm.pop() for _ in range(pages[b])]
        table[b, : len(own)] = torch.tensor(own, dtype=torch.int32)
        for j in range(0, c - 1, page_size):  # cached keys, a page at a time
            n = min(page_size, c - 1 - j)
            k_cache[own[j // page_size], :n] = torch.randn(n, hkv, d, device="cuda", generator=g).to(dtype)
            v_cache[own[j // page_size], :n] = torch.randn(n, hkv, d, device="cuda", generator=g).to(dtype)
        if c > 0:
            slots[b] = own[(c - 1) // page_size] * page_size + (c - 1) % page_size
    qkv = torch.randn(len(contexts), (hq + 2 * hkv) * d, device="cuda", generator=g).to(dtype)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    freqs = 1.0 / (10000 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    emb = torch.outer(torch.arange(8192, device="cuda").float(), freqs)
    emb = torch.cat([emb, emb], dim=-1)
    ctx = torch.tensor(contexts, dtype=torch.int32, device="cuda")
    rows = (ctx.long() - 1).clamp(min=0)
    return (q.view(-1, hq, d), k.view(-1, hkv, d), v.view(-1, hkv, d), rows, emb.cos(), emb.sin(),
            k_cache, v_cache, slots, table, ctx)  # fmt: skip


def _three_kernels(q, k, v, rows, cos, sin, kc, vc, slots, table, ctx, scale, **opts):
    q = rope_and_write_kv(q, k, v, rows, cos, sin, kc, vc, slots)
    return decode_attention(q, kc, vc, table, ctx, scale, **opts)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize(
    ("contexts", "hq", "hkv", "d", "page_size"),
    [
        ([230], 32, 8, 128, 16),  # Llama-3.1-8B at batch 1
        ([1, 4000, 0, 77], 32, 8, 128, 16),  # a long context, a padding row
        ([513, 64], 16, 2, 64, 32),  # SmolLM2-like heads, groups of 8
        ([300, 2], 8, 1, 256, 64),  # MQA, head dim 256 (Gemma 3)
    ],
)
@pytest.mark.parametrize("opts", [{}, {"sliding_window": 128}, {"softcap": 30.0}, {"sinks": True}], ids=str)
def test_matches_the_three_kernel_path(contexts, hq, hkv, d, page_size, dtype, opts):
    args = _inputs(contexts, hq, hkv, d, page_size, dtype)
    kw = dict(opts, num_splits=default_num_splits(len(contexts), hkv, max(contexts)))
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(hq, device="cuda")
    kc, vc = args[6].clone(), args[7].clone()
    got = rope_decode_attention(*args[:6], kc, vc, *args[8:], 0.1, **kw)
    kc_ref, vc_ref = args[6].clone(), args[7].clone()
    want = _three_kernels(*args[:6], kc_ref, vc_ref, *args[8:], 0.1, **kw)
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCES[dtype])
    assert torch.equal(kc.nan_to_num(7.0), kc_ref.nan_to_num(7.0))
    assert torch.equal(vc.nan_to_num(7.0), vc_ref.nan_to_num(7.0))
    assert not fused._COUNTERS[got.device].any()


def test_a_graph_of_layers_matches_eager_layers():
    """Four layers (each its own cache) chained through their outputs, captured once and
    replayed on new inputs; each replay must equal the same layers run eagerly."""
    hq, hkv, d, contexts = 32, 8, 128, [230]
    layers = [_inputs(contexts, hq, hkv, d, 16, torch.bfloat16, seed=s) for s in range(4)]
    splits = default_num_splits(1, hkv, 4096)
    assert splits > 1  # the merge path is the one under test
    x = torch.zeros_like(layers[0][0])

    def forward(caches):
        h = x
        for args, (kc, vc) in zip(layers, caches):
            h = rope_decode_attention(h, *args[1:6], kc, vc, *args[8:], 0.1, num_splits=splits) + args[0]
        return h

    caches = [(a[6].clone(), a[7].clone()) for a in layers]
    forward(caches)  # compiles, allocates the counters
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward(caches)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        out = forward(caches)
    for seed in range(3):
        x.copy_(torch.randn(x.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
        graph.replay()
        torch.cuda.synchronize()
        got = out.clone()
        eager_caches = [(kc.clone(), vc.clone()) for kc, vc in caches]
        want = forward(eager_caches)
        assert torch.equal(got, want), f"replay {seed} differs from the eager layers"
    assert not fused._COUNTERS[x.device].any()
