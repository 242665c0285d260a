"""The FP8 (e4m3) KV cache on the CPU: the storage rule, the Triton kernels that write and
read the cache (under Triton's interpreter) against their torch references, and the
references with an FP8 cache against the same references with a float32 cache.

Kernel and reference decode the same codes exactly, so they agree as closely as with a
cache of q's dtype (attention_test's tolerances). An FP8 cache against a float32 cache
differs by what e4m3 rounding allows: each element moves by at most 2^-4 of itself (3
mantissa bits), about 3.6 % RMS, and the attention output of unit-variance inputs was
measured at 3.4-3.9 % relative RMS error and at most 0.12 absolute (contexts 7 to 2000,
head dims 64 and 128); the tests allow 5 % and 0.25.
"""

# Triton's convention: compile-time constants in kernel signatures are UPPER_CASE.
# ruff: noqa: N803

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math

import pytest
import torch
import triton
import triton.language as tl

import max_kernels
from max_kernels import RaggedLayout, paged_attention, rope_and_write_kv, write_kv_cache
from max_kernels.decode_attention import decode_attention, decode_attention_reference
from max_kernels.fp8_kv_cache import (
    KV_FP8_DTYPE,
    dequantize_e4m3,
    dequantize_kv,
    quantize_e4m3,
    quantize_kv,
)
from max_kernels.prefill_attention import prefill_attention, prefill_attention_reference
from max_kernels.rotary_kv import rope_and_write_kv_reference

# Kernel against reference on the same codes: attention_test's tolerances.
TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
# An FP8 cache against a float32 cache (see the module docstring).
FP8_REL_RMS = 0.05
FP8_MAX_ABS = 0.25
K_SCALE = torch.tensor([0.37])  # not powers of two: the scale's rounding is exercised
V_SCALE = torch.tensor([1.7])


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _e4m3_grid() -> torch.Tensor:
    """Every finite e4m3 value, the midpoints between neighbours (ties) and the float32
    numbers just either side of each midpoint."""
    values = torch.arange(256, dtype=torch.uint8).view(KV_FP8_DTYPE).float()
    values = values[~values.isnan()].unique()
    mids = (values[1:] + values[:-1]) / 2
    up, down = mids.nextafter(torch.tensor(math.inf)), mids.nextafter(torch.tensor(-math.inf))
    wide = _randn(4096, seed=1) * 10 ** (
        torch.rand(4096, generator=torch.Generator().manual_seed(2)) * 8 - 5
    )
    return torch.cat([values, mids, up, down, wide, torch.tensor([500.0, -1e6, 0.0, -0.0])])


# ---------------------------------------------------------------------------------------
# The storage rule.
# ---------------------------------------------------------------------------------------


def test_quantize_kv_saturates_and_rounds_to_nearest_even():
    x = torch.tensor([1000.0, -1000.0, 448.0, 1.0625, 1.1875, 0.0013, -0.0])
    codes = quantize_kv(x, None)
    assert codes.dtype == KV_FP8_DTYPE
    # Saturation at +-448 (never NaN); ties to even (1.0625 -> 1.0, 1.1875 -> 1.25);
    # 0.0013 rounds to the smallest subnormal, 2^-9.
    assert codes.float().tolist() == [448.0, -448.0, 448.0, 1.0, 1.25, 2**-9, -0.0]
    scaled = quantize_kv(torch.tensor([3.0, 1000.0]), torch.tensor([2.0]))
    assert dequantize_kv(scaled, torch.tensor([2.0]), torch.float32).tolist() == [3.0, 896.0]


@triton.jit
def _round_trip_kernel(x_ptr, codes_ptr, out_ptr, scale_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    scale = tl.load(scale_ptr)
    tl.store(codes_ptr + i, quantize_e4m3(tl.load(x_ptr + i), scale, codes_ptr.dtype.element_ty))
    tl.store(out_ptr + i, dequantize_e4m3(tl.load(codes_ptr + i), scale, out_ptr.dtype.element_ty))


@pytest.mark.parametrize("scale", [1.0, 0.37, 4.0])
def test_triton_codes_and_values_equal_torch_s_bit_for_bit(scale):
    """The integer encoder behind a uint8 view (the interpreter's path, and older GPUs')
    gives torch's codes for every e4m3 value, every tie and values around them."""
    x = _e4m3_grid()
    n = triton.next_power_of_2(x.numel())
    x = torch.cat([x, torch.zeros(n - x.numel())])
    s = torch.tensor([scale])
    codes = torch.empty(n, dtype=torch.uint8)
    out = torch.empty(n)
    _round_trip_kernel[(1,)](x, codes, out, s, n)
    expected = quantize_kv(x, s)
    assert torch.equal(codes, expected.view(torch.uint8))
    assert torch.equal(out, dequantize_kv(expected, s, torch.float32))


def test_triton_decodes_every_code_as_torch_does():
    """Both load paths (float8 pointers, uint8 view) decode all 256 codes as torch."""
    codes = torch.arange(256, dtype=torch.uint8)
    expected = codes.view(KV_FP8_DTYPE).float()
    finite = ~expected.isnan()
    for cache in (codes, codes.view(KV_FP8_DTYPE)):
        out = torch.empty(256)
        _decode_kernel[(1,)](cache, out, 256)
        assert torch.equal(out[finite], expected[finite])
    # The integer decoder keeps the NaN codes NaN (the interpreter's float8 load gives 480).
    out = torch.empty(256)
    _decode_kernel[(1,)](codes, out, 256)
    assert out[~finite].isnan().all()


@triton.jit
def _decode_kernel(codes_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(out_ptr + i, dequantize_e4m3(tl.load(codes_ptr + i), 1.0, tl.float32))


# ---------------------------------------------------------------------------------------
# Batches in an FP8 cache.
# ---------------------------------------------------------------------------------------


def _fp8_batch(
    cached, new, hq=4, hkv=2, d=64, page_size=16, dtype=torch.float32, seed=0, poison=True
):
    """Request b has cached[b] keys and new[b] query tokens, in scattered pages of an FP8
    cache (quantized with K_SCALE / V_SCALE) and of a float32 cache with the same values.
    With `poison`, slots no request owns hold e4m3 NaN codes (NaN in the float32 cache), so
    a kernel that reads past a context fails; else zeros, as the engine's pages start
    (the padded reference multiplies such slots by a zero weight)."""
    g = torch.Generator().manual_seed(seed)
    totals = [c + n for c, n in zip(cached, new)]
    pages_needed = [-(-t // page_size) for t in totals]
    num_pages = sum(pages_needed) + 2
    k32 = torch.full((num_pages, page_size, hkv, d), math.nan if poison else 0.0)
    v32 = k32.clone()
    perm = torch.randperm(num_pages - 1, generator=g).tolist()
    table = torch.full((len(new), max(pages_needed) + 1), num_pages - 1, dtype=torch.int32)
    for b, total in enumerate(totals):
        pages = [perm.pop() for _ in range(pages_needed[b])]
        table[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        k = torch.randn(total, hkv, d, generator=g)
        v = torch.randn(total, hkv, d, generator=g)
        for j in range(total):
            k32[pages[j // page_size], j % page_size] = k[j]
            v32[pages[j // page_size], j % page_size] = v[j]
    k8, v8 = quantize_kv(k32, K_SCALE), quantize_kv(v32, V_SCALE)  # NaN stays NaN (0x7F)
    q = torch.randn(sum(new), hq, d, generator=g).to(dtype)
    starts = torch.tensor([0, *torch.cumsum(torch.tensor(new), 0).tolist()], dtype=torch.int32)
    return dict(
        q=q,
        k8=k8,
        v8=v8,
        k32=k32,
        v32=v32,
        page_table=table,
        query_start=starts,
        context_lens=torch.tensor(totals, dtype=torch.int32),
        scale=d**-0.5,
    )


def _sinks(hq):
    return _randn(hq, seed=7) * 2


OPTIONS = {
    "plain": lambda hq: {},
    "window": lambda hq: dict(sliding_window=24),
    "sinks": lambda hq: dict(sinks=_sinks(hq)),
    "window_softcap_sinks": lambda hq: dict(sliding_window=16, softcap=5.0, sinks=_sinks(hq)),
}


def _decode(fn, b, splits=None, fp8=True, **opts):
    if fp8:
        opts.update(k_scale=K_SCALE, v_scale=V_SCALE)
    k, v = (b["k8"], b["v8"]) if fp8 else (b["k32"], b["v32"])
    return fn(
        b["q"], k, v, b["page_table"], b["context_lens"], b["scale"], num_splits=splits, **opts
    )


def _prefill(fn, b, fp8=True, **opts):
    if fp8:
        opts.update(k_scale=K_SCALE, v_scale=V_SCALE)
    k, v = (b["k8"], b["v8"]) if fp8 else (b["k32"], b["v32"])
    new = (b["query_start"][1:] - b["query_start"][:-1]).tolist()
    return fn(
        b["q"],
        k,
        v,
        b["page_table"],
        b["query_start"],
        b["context_lens"],
        max(new),
        b["scale"],
        **opts,
    )


# ---------------------------------------------------------------------------------------
# Kernels against references, FP8 cache.
# ---------------------------------------------------------------------------------------

DECODE_CASES = {
    # name: (contexts, layout, num_splits, option)
    "gqa2": ([37, 130, 1], dict(hq=4, hkv=2), 1, "plain"),
    "gqa4_page32_splits": ([70, 200, 9], dict(hq=8, hkv=2, page_size=32), 3, "plain"),
    "window_splits": ([100, 7], dict(hq=8, hkv=2), 2, "window"),
    "sinks_splits": ([90, 2], dict(hq=4, hkv=1), 3, "sinks"),
    "window_softcap_sinks": ([100, 7], dict(hq=8, hkv=2), 1, "window_softcap_sinks"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_kernel_reads_fp8_cache_as_reference(case, dtype):
    contexts, layout, splits, option = DECODE_CASES[case]
    b = _fp8_batch([c - 1 for c in contexts], [1] * len(contexts), dtype=dtype, **layout)
    opts = OPTIONS[option](layout["hq"])
    out = _decode(decode_attention, b, splits, **opts)
    expected = _decode(decode_attention_reference, b, **opts)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])


PREFILL_CASES = {
    # name: (cached, new, layout, option)
    "mixed_chunk_mqa": ([30, 0, 5], [1, 40, 9], dict(hq=4, hkv=1), "plain"),
    "window": ([50, 0], [30, 45], dict(hq=8, hkv=2), "window"),
    "window_softcap_sinks": ([50, 0], [30, 45], dict(hq=8, hkv=2), "window_softcap_sinks"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(PREFILL_CASES))
def test_prefill_kernel_reads_fp8_cache_as_reference(case, dtype):
    cached, new, layout, option = PREFILL_CASES[case]
    b = _fp8_batch(cached, new, dtype=dtype, **layout)
    opts = OPTIONS[option](layout["hq"])
    out = _prefill(prefill_attention, b, **opts)
    expected = _prefill(prefill_attention_reference, b, **opts)
    torch.testing.assert_close(out, expected, **TOLERANCES[dtype])


def _rope_inputs(t=11, hq=4, hkv=2, d=64, dtype=torch.float32):
    q, k, v = (_randn(t, h, d, seed=s, dtype=dtype) * 3 for s, h in ((1, hq), (2, hkv), (3, hkv)))
    positions = torch.arange(t) * 3
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(64).float(), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    slots = torch.randperm(4 * 8, generator=torch.Generator().manual_seed(4))[:t]
    slots[3] = -1  # a padding row: nothing stored
    return q, k, v, positions, cos, sin, slots


def _fp8_cache(hkv=2, d=64):
    return torch.zeros(4, 8, hkv, d, dtype=KV_FP8_DTYPE), torch.zeros(
        4, 8, hkv, d, dtype=KV_FP8_DTYPE
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_kernel_writes_the_reference_s_codes(dtype):
    q, k, v, pos, cos, sin, slots = _rope_inputs(dtype=dtype)
    kc, vc = _fp8_cache()
    kr, vr = _fp8_cache()
    q_out = rope_and_write_kv(
        q, k, v, pos, cos, sin, kc, vc, slots, k_scale=K_SCALE, v_scale=V_SCALE
    )
    q_ref = rope_and_write_kv_reference(
        q, k, v, pos, cos, sin, kr, vr, slots, k_scale=K_SCALE, v_scale=V_SCALE
    )
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=4e-2, rtol=2e-2)
    torch.testing.assert_close(q_out, q_ref, **tol)
    # v's codes are bit for bit; k's too in float32. In bfloat16 the reference rounds the
    # rotated k to bfloat16 before quantizing: a code may then move by one e4m3 step.
    assert torch.equal(vc.view(torch.uint8), vr.view(torch.uint8))
    if dtype == torch.float32:
        assert torch.equal(kc.view(torch.uint8), kr.view(torch.uint8))
    else:
        a, b = kc.float(), kr.float()
        assert torch.all((a - b).abs() <= 2**-3 * b.abs() + 2**-9)
    assert kc.view(torch.uint8).count_nonzero() > 0  # something was written


def test_write_kv_cache_reference_quantizes_as_the_rope_reference():
    _, k, v, _, _, _, slots = _rope_inputs()
    keep = slots >= 0
    kc, vc = _fp8_cache()
    layout = _layout_for_slots(slots[keep])
    write_kv_cache(k[keep], v[keep], kc, vc, layout, k_scale=K_SCALE, v_scale=V_SCALE)
    flat = kc.view(-1, *kc.shape[2:])[slots[keep]]
    assert torch.equal(flat.view(torch.uint8), quantize_kv(k[keep], K_SCALE).view(torch.uint8))
    flat = vc.view(-1, *vc.shape[2:])[slots[keep]]
    assert torch.equal(flat.view(torch.uint8), quantize_kv(v[keep], V_SCALE).view(torch.uint8))


def _layout_for_slots(slots):
    n = slots.numel()
    return RaggedLayout(
        query_start=torch.tensor([0, n], dtype=torch.int32),
        context_lens=torch.tensor([n], dtype=torch.int32),
        page_table=torch.zeros(1, 4, dtype=torch.int32),
        slot_mapping=slots.long(),
        page_size=8,
        num_decode=0,
        query_lens=[n],
        context_lens_host=[n],
    )


def _step_layout(b, num_decode, num_splits=1):
    new = (b["query_start"][1:] - b["query_start"][:-1]).tolist()
    return RaggedLayout(
        query_start=b["query_start"],
        context_lens=b["context_lens"],
        page_table=b["page_table"],
        slot_mapping=torch.zeros(sum(new), dtype=torch.int64),
        page_size=b["k8"].shape[1],
        num_decode=num_decode,
        query_lens=new,
        context_lens_host=b["context_lens"].tolist(),
        num_splits=num_splits,
    )


@pytest.mark.parametrize("option", ["plain", "window_softcap_sinks"])
def test_paged_attention_dispatch_reads_fp8_cache_as_reference(option):
    """A step of two decodes (split-K) and two prefills: the Triton dispatch against the
    reference dispatch (its padded SDPA path), both on the FP8 cache."""
    b = _fp8_batch([40, 90, 20, 0], [1, 1, 13, 30], hq=8, hkv=2, poison=False)
    layout = _step_layout(b, num_decode=2, num_splits=3)
    opts = OPTIONS[option](8)
    args = (b["q"], b["k8"], b["v8"], layout, b["scale"])
    with max_kernels.backend("triton"):
        out = paged_attention(*args, **opts, k_scale=K_SCALE, v_scale=V_SCALE)
    with max_kernels.backend("torch"):
        expected = paged_attention(*args, **opts, k_scale=K_SCALE, v_scale=V_SCALE)
    torch.testing.assert_close(out, expected, **TOLERANCES[torch.float32])


# ---------------------------------------------------------------------------------------
# References: FP8 cache against float32 cache.
# ---------------------------------------------------------------------------------------


def _assert_within_e4m3_error(out, exact):
    rel_rms = ((out - exact).norm() / exact.norm()).item()
    assert rel_rms < FP8_REL_RMS, rel_rms
    assert (out - exact).abs().max().item() < FP8_MAX_ABS


@pytest.mark.parametrize("option", ["plain", "window_softcap_sinks"])
def test_fp8_decode_reference_is_within_e4m3_error_of_float32_cache(option):
    b = _fp8_batch([299, 49, 6], [1, 1, 1], hq=8, hkv=2)
    opts = OPTIONS[option](8)
    out = _decode(decode_attention_reference, b, **opts)
    exact = _decode(decode_attention_reference, b, fp8=False, **opts)
    _assert_within_e4m3_error(out, exact)


def test_fp8_prefill_and_paged_references_are_within_e4m3_error_of_float32_cache():
    b = _fp8_batch([40, 0], [1, 60], hq=4, hkv=1, poison=False)
    _assert_within_e4m3_error(
        _prefill(prefill_attention_reference, b),
        _prefill(prefill_attention_reference, b, fp8=False),
    )
    layout = _step_layout(b, num_decode=1)
    with max_kernels.backend("torch"):
        out = paged_attention(
            b["q"], b["k8"], b["v8"], layout, b["scale"], k_scale=K_SCALE, v_scale=V_SCALE
        )
        exact = paged_attention(b["q"], b["k32"], b["v32"], layout, b["scale"])
    _assert_within_e4m3_error(out, exact)


def test_a_cache_of_q_s_dtype_ignores_the_scales():
    b = _fp8_batch([30], [1])
    plain = _decode(decode_attention_reference, b, fp8=False)
    scaled = decode_attention_reference(
        b["q"],
        b["k32"],
        b["v32"],
        b["page_table"],
        b["context_lens"],
        b["scale"],
        k_scale=K_SCALE,
        v_scale=V_SCALE,
    )
    assert torch.equal(plain, scaled)
