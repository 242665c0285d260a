"""Decode and prefill attention kernels on CUDA at full size, against their torch references.

The references (checked against plain attention in attention_test.py) run in float32 on the
same inputs and are compared unrounded, so the tolerances measure the kernels alone.
"""

import math

import pytest
import torch

from max_kernels.cuda_graph import capture_graph
from max_kernels.decode_attention import (
    decode_attention,
    decode_attention_reference,
    default_num_splits,
)
from max_kernels.fp8_kv_cache import quantize_kv
from max_kernels.prefill_attention import (
    prefill_attention,
    prefill_attention_reference,
)
from max_kernels.rotary_kv import rope_and_write_kv, rope_and_write_kv_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The 16-bit kernels round probabilities to the input dtype before the P·V product, and
# round the output once; float32 kernels use exact (ieee) dot products.
TOLERANCES = {
    torch.float32: dict(atol=2e-4, rtol=2e-4),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}
DTYPES = list(TOLERANCES)
HEAD_DIMS = [64, 80, 96, 128, 256]
PAGE_SIZES = [16, 32, 64, 128]
# With 8 query heads: MHA (group 1), GQA group 4, and MQA (group 8).
KV_HEADS = [8, 2, 1]


class Paged:
    """A ragged batch whose keys and values sit in scattered pages of a CUDA paged cache.

    Slots no request owns and unused page-table entries hold NaN, so a kernel that reads
    past a request's context poisons its output.
    """

    def __init__(self, cached, new, hq, hkv, d, page_size, dtype, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)
        contexts = [c + n for c, n in zip(cached, new)]
        needed = [-(-c // page_size) for c in contexts]
        num_pages = sum(needed) + 1
        nan_page = num_pages - 1
        perm = torch.randperm(num_pages - 1, generator=torch.Generator().manual_seed(seed))
        table = torch.full((len(contexts), max(needed + [1])), nan_page, dtype=torch.int32)
        owned = torch.zeros(num_pages * page_size, dtype=torch.bool)
        first = 0
        for b, c in enumerate(contexts):
            pages = perm[first : first + needed[b]]
            first += needed[b]
            table[b, : len(pages)] = pages.int()
            j = torch.arange(c)
            owned[pages[j // page_size] * page_size + j % page_size] = True
        shape = (num_pages, page_size, hkv, d)
        self.k_cache = torch.randn(shape, generator=g, device="cuda", dtype=dtype)
        self.v_cache = torch.randn(shape, generator=g, device="cuda", dtype=dtype)
        free = ~owned.cuda()
        self.k_cache.view(-1, hkv, d)[free] = math.nan
        self.v_cache.view(-1, hkv, d)[free] = math.nan
        self.page_table = table.cuda()
        self.context_lens = torch.tensor(contexts, dtype=torch.int32, device="cuda")
        starts = [0]
        for n in new:
            starts.append(starts[-1] + n)
        self.query_start = torch.tensor(starts, dtype=torch.int32, device="cuda")
        self.max_query_len = max(new)
        self.q = torch.randn(starts[-1], hq, d, generator=g, device="cuda", dtype=dtype)
        self.scale = d**-0.5


def _decode_batch(contexts, hq, hkv, d, page_size, dtype, seed=0):
    """One query per request; context 0 is a padding row (its query row still exists)."""
    batch = Paged(
        [max(c - 1, 0) for c in contexts], [1] * len(contexts), hq, hkv, d, page_size, dtype, seed
    )
    # Padding rows own no keys: Paged gave them one, so take it back.
    batch.context_lens = torch.tensor(contexts, dtype=torch.int32, device="cuda")
    return batch


def _decode(fn, batch, **opts):
    out = torch.full_like(batch.q, math.nan)
    fn(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.page_table,
        batch.context_lens,
        batch.scale,
        out=out,
        **opts,
    )
    return out


def _decode_expected(batch, **opts):
    out = torch.empty(batch.q.shape, dtype=torch.float32, device="cuda")
    opts.pop("num_splits", None)
    decode_attention_reference(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.page_table,
        batch.context_lens,
        batch.scale,
        out=out,
        **opts,
    )
    return out


def _prefill(fn, batch, out_dtype=None, **opts):
    out = torch.full(batch.q.shape, math.nan, dtype=out_dtype or batch.q.dtype, device="cuda")
    fn(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        batch.page_table,
        batch.query_start,
        batch.context_lens,
        batch.max_query_len,
        batch.scale,
        out=out,
        **opts,
    )
    return out


def _check(out, expected, dtype):
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), expected, **TOLERANCES[dtype])


def _sinks(hq, seed=3):
    return torch.randn(hq, generator=torch.Generator().manual_seed(seed)).cuda() * 2


# ---------------------------------------------------------------------------------------
# Head dims x page sizes x GQA groups x dtypes.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hkv", KV_HEADS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_decode_grid(head_dim, page_size, hkv, dtype):
    # One-token, padding, partial-page and multi-tile contexts.
    batch = _decode_batch([1, 0, 77, 300, 1029], 8, hkv, head_dim, page_size, dtype)
    expected = _decode_expected(batch)
    for splits in (1, 5):
        _check(_decode(decode_attention, batch, num_splits=splits), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hkv", KV_HEADS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_prefill_grid(head_dim, page_size, hkv, dtype):
    # Mixed decodes, a chunk continuation after a cached prefix, and a fresh prompt.
    batch = Paged([100, 0, 37, 0], [1, 1, 300, 129], 8, hkv, head_dim, page_size, dtype)
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32)
    _check(_prefill(prefill_attention, batch), expected, dtype)


# ---------------------------------------------------------------------------------------
# Sliding window, softcap, sinks.
# ---------------------------------------------------------------------------------------

OPTIONS = {
    "window": dict(sliding_window=128),
    "softcap": dict(softcap=30.0),
    "sinks": dict(sinks=True),
    "all": dict(sliding_window=100, softcap=20.0, sinks=True),
}


def _opts(name, hq=32):
    opts = dict(OPTIONS[name])
    if opts.get("sinks"):
        opts["sinks"] = _sinks(hq)
    return opts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("splits", [1, 7])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_decode_options(option, splits, dtype):
    batch = _decode_batch([5, 0, 1000, 3000, 129], 32, 8, 128, 16, dtype)
    opts = _opts(option)
    expected = _decode_expected(batch, **opts)
    _check(_decode(decode_attention, batch, num_splits=splits, **opts), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_prefill_options(option, dtype):
    batch = Paged([0, 700, 5], [600, 250, 1], 32, 8, 128, 16, dtype)
    opts = _opts(option)
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32, **opts)
    _check(_prefill(prefill_attention, batch, **opts), expected, dtype)


# ---------------------------------------------------------------------------------------
# Realistic sizes.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [16, 128])
def test_decode_32k_single_request_split_k(page_size):
    batch = _decode_batch([32768], 32, 8, 128, page_size, torch.bfloat16)
    splits = default_num_splits(1, 8, max_context=32768)
    assert splits > 8
    expected = _decode_expected(batch, sinks=_sinks(32))
    _check(
        _decode(decode_attention, batch, num_splits=splits, sinks=_sinks(32)),
        expected,
        torch.bfloat16,
    )


def test_decode_batch_64_by_4k():
    contexts = [4096 - 37 * i for i in range(64)]
    batch = _decode_batch(contexts, 32, 8, 128, 16, torch.bfloat16)
    splits = default_num_splits(64, 8, max_context=4096)
    _check(
        _decode(decode_attention, batch, num_splits=splits), _decode_expected(batch), torch.bfloat16
    )


def test_prefill_8_by_2k():
    batch = Paged([0] * 8, [2048] * 8, 32, 8, 128, 16, torch.bfloat16)
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32)
    _check(_prefill(prefill_attention, batch), expected, torch.bfloat16)


def test_decode_replays_in_a_cuda_graph():
    """Captured once, the kernel follows new context lengths and queries on replay."""
    batch = _decode_batch([300, 260, 1000, 17], 32, 8, 128, 16, torch.bfloat16)
    batch.context_lens[1] = 0
    out = torch.empty_like(batch.q)

    def step():
        decode_attention(
            batch.q,
            batch.k_cache,
            batch.v_cache,
            batch.page_table,
            batch.context_lens,
            batch.scale,
            num_splits=4,
            out=out,
        )

    graph, _ = capture_graph(step)
    for contexts in ([299, 0, 1000, 17], [1, 250, 0, 16]):
        # Shorter contexts stay within each request's pages.
        batch.context_lens.copy_(torch.tensor(contexts, dtype=torch.int32))
        batch.q.normal_()
        graph.replay()
        torch.cuda.synchronize()
        _check(out, _decode_expected(batch), torch.bfloat16)


# ---------------------------------------------------------------------------------------
# FP8 (e4m3) KV cache at Llama-3.1-8B's shape: 32 query heads, 8 KV heads, head dim 128,
# pages of 128 tokens. Kernel and reference decode the same codes, so the 16-bit
# tolerances hold; the rope kernel must write the reference's codes.
# ---------------------------------------------------------------------------------------

K_SCALE, V_SCALE = 0.37, 1.7  # not powers of two: the scales' arithmetic is exercised


def _fp8(batch: Paged) -> Paged:
    """The batch with its caches quantized to e4m3 (NaN slots stay NaN codes)."""
    batch.k_scale = torch.tensor([K_SCALE], device="cuda")
    batch.v_scale = torch.tensor([V_SCALE], device="cuda")
    batch.k_cache = quantize_kv(batch.k_cache, batch.k_scale)
    batch.v_cache = quantize_kv(batch.v_cache, batch.v_scale)
    return batch


def _scales(batch: Paged) -> dict:
    return dict(k_scale=batch.k_scale, v_scale=batch.v_scale)


@pytest.mark.parametrize("option", ["plain", "window", "sinks", "all"])
@pytest.mark.parametrize("splits", [1, None])
def test_fp8_cache_decode_llama_8b(splits, option):
    contexts = [4096, 0, 1, 129, 2000, 3333, 77, 4000]
    batch = _fp8(_decode_batch(contexts, 32, 8, 128, 128, torch.bfloat16))
    opts = {} if option == "plain" else _opts(option)
    if splits is None:
        splits = default_num_splits(len(contexts), 8, max_context=4096)
    expected = _decode_expected(batch, **opts, **_scales(batch))
    out = _decode(decode_attention, batch, num_splits=splits, **opts, **_scales(batch))
    _check(out, expected, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_fp8_cache_decode_batch_64_other_dtypes(dtype):
    batch = _fp8(_decode_batch([4096 - 61 * i for i in range(64)], 32, 8, 128, 128, dtype))
    expected = _decode_expected(batch, **_scales(batch))
    _check(_decode(decode_attention, batch, num_splits=2, **_scales(batch)), expected, dtype)


@pytest.mark.parametrize("option", ["plain", "window", "sinks", "all"])
def test_fp8_cache_prefill_llama_8b(option):
    # A fresh 2k prompt, a chunk after a cached 1.7k prefix, decodes mixed in.
    batch = _fp8(Paged([0, 1700, 5, 4000], [2048, 600, 1, 1], 32, 8, 128, 128, torch.bfloat16))
    opts = {} if option == "plain" else _opts(option)
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32, **opts, **_scales(batch))
    _check(_prefill(prefill_attention, batch, **opts, **_scales(batch)), expected, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_fp8_cache_rope_write_gives_the_reference_s_codes(dtype):
    t, hq, hkv, d, page_size = 3000, 32, 8, 128, 128
    g = torch.Generator(device="cuda").manual_seed(5)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g, device="cuda", dtype=dtype) * 4
    q, k, v = (x.view(t, -1, d) for x in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    positions = torch.randint(0, 8192, (t,), generator=g, device="cuda")
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    freqs = torch.outer(torch.arange(8192, device="cuda").float(), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    num_pages = -(-t // page_size) + 1
    slots = torch.randperm(num_pages * page_size, generator=torch.Generator().manual_seed(5))[:t].cuda()
    scales = dict(k_scale=torch.tensor([K_SCALE], device="cuda"), v_scale=torch.tensor([V_SCALE], device="cuda"))
    caches = [torch.zeros(num_pages, page_size, hkv, d, dtype=torch.float8_e4m3fn, device="cuda") for _ in range(4)]
    q_out = rope_and_write_kv(q, k, v, positions, cos, sin, caches[0], caches[1], slots, **scales)
    q_ref = rope_and_write_kv_reference(q, k, v, positions, cos, sin, caches[2], caches[3], slots, **scales)
    # The values are 4x fused_ops_gpu_test's (to reach e4m3's range), and so is the bfloat16
    # tolerance: the reference rotates in bfloat16, the kernel in float32.
    torch.testing.assert_close(q_out.float(), q_ref.float(), atol=1.6e-1 if dtype == torch.bfloat16 else 1e-5, rtol=2e-2)
    # v: the same float32 value quantized the same way, so the same codes.
    assert torch.equal(caches[1].view(torch.uint8), caches[3].view(torch.uint8))
    # k: rotated in float32 (the reference rounds it to q's dtype first, and the GPU may
    # fuse a multiply-add), so a code near a tie may move by one e4m3 step.
    # In bfloat16 the reference also rounds each product of the rotation (see q above).
    a, b = caches[0].float(), caches[2].float()
    slack = 2**-9 * K_SCALE if dtype == torch.float32 else 4e-1 / K_SCALE  # codes are x / K_SCALE
    assert torch.all((a - b).abs() <= 2**-3 * b.abs() + slack)
    assert (caches[0].view(torch.uint8) != caches[2].view(torch.uint8)).float().mean() < (0.01 if dtype == torch.float32 else 0.05)


def test_fp8_cache_without_native_e4m3_takes_the_integer_path(monkeypatch):
    """GPUs before capability 8.9 get the uint8 view and the integer codec; forced here."""
    from max_kernels import fp8_kv_cache

    monkeypatch.setattr(fp8_kv_cache, "fp8_supported", lambda device: False)
    batch = _fp8(_decode_batch([3000, 0, 129, 4096], 32, 8, 128, 128, torch.bfloat16))
    expected = _decode_expected(batch, **_scales(batch))
    _check(_decode(decode_attention, batch, num_splits=3, **_scales(batch)), expected, torch.bfloat16)
    batch = _fp8(Paged([0, 300], [700, 129], 32, 8, 128, 128, torch.bfloat16))
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32, **_scales(batch))
    _check(_prefill(prefill_attention, batch, **_scales(batch)), expected, torch.bfloat16)


def test_fp8_cache_decode_replays_in_a_cuda_graph():
    """The scales are read from the device, so a captured step follows them too."""
    batch = _fp8(_decode_batch([300, 260, 4000, 17], 32, 8, 128, 128, torch.bfloat16))
    out = torch.empty_like(batch.q)

    def step():
        decode_attention(
            batch.q,
            batch.k_cache,
            batch.v_cache,
            batch.page_table,
            batch.context_lens,
            batch.scale,
            num_splits=4,
            out=out,
            **_scales(batch),
        )

    graph, _ = capture_graph(step)
    for contexts, v_scale in (([299, 0, 4000, 17], V_SCALE), ([1, 250, 3000, 16], 0.5)):
        batch.context_lens.copy_(torch.tensor(contexts, dtype=torch.int32))
        batch.v_scale.fill_(v_scale)
        batch.q.normal_()
        graph.replay()
        torch.cuda.synchronize()
        _check(out, _decode_expected(batch, **_scales(batch)), torch.bfloat16)


# ---------------------------------------------------------------------------------------
# Tokens that see keys ahead of them (Gemma 3's images: 256 tokens each).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [None, 200])
def test_prefill_key_limits_gemma3_images(window, dtype):
    cached, new = [40, 300, 0], [1, 600, 520]
    spans = [[], [(310, 566)], [(5, 261), (263, 519)]]
    batch = Paged(cached, new, 8, 4, 256, 16, dtype)
    limits = []
    for c, n, blocks in zip(cached, new, spans):
        pos = torch.arange(c, c + n)
        for start, end in blocks:
            pos = torch.where((pos >= start) & (pos < end), end - 1, pos)
        limits.append(pos)
    opts = dict(sliding_window=window, key_limit=torch.cat(limits).cuda())
    expected = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32, **opts)
    causal = _prefill(prefill_attention_reference, batch, out_dtype=torch.float32, sliding_window=window)
    assert not torch.allclose(expected, causal)
    _check(_prefill(prefill_attention, batch, **opts), expected, dtype)
