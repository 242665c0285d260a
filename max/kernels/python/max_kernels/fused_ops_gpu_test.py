"""The fused elementwise kernels at full size on a CUDA GPU, against their torch references.

RMSNorm (+ residual) over hidden sizes 4096/8192 and per-head norms (q and k in one launch
at Qwen3-30B-A3B's heads too), rope + KV-cache write at Hq 32 / Hkv 8 for head dims
64/80/128/256, and the gated activations, each for 1 to 8192 tokens in float32, bfloat16
and float16; and each op replayed from a CUDA graph. The
reference runs on the same GPU. On the GPU float32 -> bfloat16 rounds to nearest even (the
CPU interpreter truncates), so the tolerances here are tighter than in fused_ops_test.py and
the residual sum must match bit for bit.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from max_kernels.activation import (
    gelu_tanh_and_mul,
    gelu_tanh_and_mul_reference,
    silu_and_mul,
    silu_and_mul_reference,
)
from max_kernels.cuda_graph import capture_graph
from max_kernels.normalization import (
    rms_norm,
    rms_norm_qk,
    rms_norm_qk_reference,
    rms_norm_reference,
)
from max_kernels.rotary_kv import rope_and_write_kv, rope_and_write_kv_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOKENS = [1, 7, 256, 8192]
EPS = 1e-6

# Triton vs reference (see fused_ops_test.py for where each difference comes from).
RMS_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
    torch.float16: dict(atol=1e-3, rtol=2e-3),
}
ROPE_TOL = {
    torch.float32: dict(atol=1e-6, rtol=1e-6),
    torch.bfloat16: dict(atol=4e-2, rtol=2e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}
ACT_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-3, rtol=1.6e-2),
    torch.float16: dict(atol=1e-4, rtol=2e-3),
}
# Triton vs the same math in float32 rounded once: at most one ulp apart.
ONE_ROUNDING_TOL = {
    torch.float32: dict(atol=1e-6, rtol=2e-6),
    torch.bfloat16: dict(atol=1e-6, rtol=8e-3),
    torch.float16: dict(atol=1e-6, rtol=1e-3),
}


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)


def _norm_weight(d, dtype, gemma, seed):
    w = _randn(d, dtype=torch.float32, seed=seed, scale=0.1)
    return (w if gemma else 1.0 + w).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [4096, 8192])
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("gemma", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_full_size(dtype, hidden, tokens, gemma, with_residual):
    x = _randn(tokens, hidden, dtype=dtype, seed=1)
    residual = _randn(tokens, hidden, dtype=dtype, seed=2) if with_residual else None
    w = _norm_weight(hidden, dtype, gemma, seed=3)
    got = rms_norm(x, w, EPS, residual=residual, gemma=gemma)
    want = rms_norm_reference(x, w, EPS, residual=residual, gemma=gemma)
    if with_residual:
        (got, got_sum), (want, want_sum) = got, want
        assert torch.equal(got_sum, want_sum)
    torch.testing.assert_close(got, want, **RMS_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
@pytest.mark.parametrize("tokens", [1, 8192])
def test_rms_norm_per_head_on_fused_qkv_view(dtype, head_dim, tokens):
    hq, hkv = 32, 8
    qkv = _randn(tokens, (hq + 2 * hkv) * head_dim, dtype=dtype, seed=4)
    q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
    w = _norm_weight(head_dim, dtype, gemma=False, seed=5)
    out = torch.full((tokens, hq, head_dim), float("nan"), dtype=dtype, device="cuda")
    got = rms_norm(q, w, EPS, out=out)
    assert not out.isnan().any()
    torch.testing.assert_close(got, rms_norm_reference(q, w, EPS), **RMS_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 16, 8192])
def test_rms_norm_qk_at_qwen3_30b_a3b_heads(dtype, tokens):
    # Qwen3-30B-A3B: 32 query and 4 key heads of 128, q_norm and k_norm in one launch.
    hq, hkv, hd = 32, 4, 128
    qkv = _randn(tokens, (hq + 2 * hkv) * hd, dtype=dtype, seed=8)
    qk = qkv[:, : (hq + hkv) * hd].view(tokens, hq + hkv, hd)
    wq = _norm_weight(hd, dtype, gemma=False, seed=9)
    wk = _norm_weight(hd, dtype, gemma=False, seed=10)
    got = rms_norm_qk(qk, wq, wk, hq, EPS)
    torch.testing.assert_close(got, rms_norm_qk_reference(qk, wq, wk, hq, EPS), **RMS_TOL[dtype])
    graph, out = capture_graph(lambda: rms_norm_qk(qk, wq, wk, hq, EPS))
    qkv.copy_(_randn(tokens, (hq + 2 * hkv) * hd, dtype=dtype, seed=11))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, rms_norm_qk(qk, wq, wk, hq, EPS))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_tables(rotary_dim, max_pos, theta=500000.0):
    inv = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().cuda(), emb.sin().cuda()


def _rope_float32(x, cos, sin, positions, dtype):
    r = cos.shape[-1]
    c, s = cos[positions][:, None], sin[positions][:, None]
    xf = x.float()
    rotated = xf[..., :r] * c + _rotate_half(xf[..., :r]) * s
    return torch.cat((rotated, xf[..., r:]), -1).to(dtype)


def _rope_inputs(dtype, tokens, head_dim, rotary_dim, hq=32, hkv=8, page_size=16):
    max_pos = 32768
    qkv = _randn(tokens, (hq + 2 * hkv) * head_dim, dtype=dtype, seed=6)
    q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hkv) * head_dim].view(tokens, hkv, head_dim)
    v = qkv[:, (hq + hkv) * head_dim :].view(tokens, hkv, head_dim)
    g = torch.Generator().manual_seed(7)
    positions = torch.randint(0, max_pos, (tokens,), generator=g).cuda()
    num_pages = tokens // page_size + 4
    num_slots = num_pages * page_size
    slots = torch.randperm(num_slots - 1, generator=g)[:tokens]
    slots[::13] = -1  # padding rows (token 0 among them)
    cos, sin = _rope_tables(rotary_dim, max_pos)
    k_cache = torch.full(
        (num_pages, page_size, hkv, head_dim), float("nan"), dtype=dtype, device="cuda"
    )
    v_cache = torch.full_like(k_cache, float("nan"))
    return q, k, v, positions, cos, sin, k_cache, v_cache, slots.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "head_dim, rotary_dim", [(64, 64), (80, 80), (128, 128), (128, 64), (256, 256)]
)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rope_and_write_kv_full_size(dtype, head_dim, rotary_dim, tokens):
    q, k, v, positions, cos, sin, k_cache, v_cache, slots = _rope_inputs(
        dtype, tokens, head_dim, rotary_dim
    )
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    got = rope_and_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots)
    want = rope_and_write_kv_reference(q, k, v, positions, cos, sin, k_ref, v_ref, slots)
    torch.testing.assert_close(got, want, **ROPE_TOL[dtype])
    torch.testing.assert_close(
        got, _rope_float32(q, cos, sin, positions, dtype), **ONE_ROUNDING_TOL[dtype]
    )
    assert torch.equal(k_cache.isnan(), k_ref.isnan())
    torch.testing.assert_close(k_cache, k_ref, equal_nan=True, **ROPE_TOL[dtype])
    torch.testing.assert_close(v_cache, v_ref, equal_nan=True, atol=0, rtol=0)
    assert k_cache.view(-1, *k_cache.shape[2:])[-1].isnan().all()


ACTIVATIONS = {
    "silu": (silu_and_mul, silu_and_mul_reference, F.silu),
    "gelu_tanh": (
        gelu_tanh_and_mul,
        gelu_tanh_and_mul_reference,
        lambda x: F.gelu(x, approximate="tanh"),
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("inter", [1000, 14336])
@pytest.mark.parametrize("tokens", TOKENS)
def test_gated_activation_full_size(dtype, act, inter, tokens):
    kernel, reference, fn = ACTIVATIONS[act]
    x = _randn(tokens, 2 * inter, dtype=dtype, seed=8, scale=2.0)
    got = kernel(x)
    torch.testing.assert_close(got, reference(x), **ACT_TOL[dtype])
    once = (fn(x[:, :inter].float()) * x[:, inter:].float()).to(dtype)
    torch.testing.assert_close(got, once, **ONE_ROUNDING_TOL[dtype])


def _replay_matches(run, refill, check):
    """Captures `run` in a CUDA graph (after a warm-up that compiles), refills the static
    inputs with new values, replays, and checks the result."""
    graph, result = capture_graph(run)
    refill()
    graph.replay()
    torch.cuda.synchronize()
    check(result)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_ops_replay_from_cuda_graph(dtype):
    hidden, tokens = 4096, 64
    x = _randn(tokens, hidden, dtype=dtype, seed=9)
    residual = _randn(tokens, hidden, dtype=dtype, seed=10)
    w = _norm_weight(hidden, dtype, gemma=False, seed=11)

    def refill_norm():
        x.copy_(_randn(tokens, hidden, dtype=dtype, seed=12))
        residual.copy_(_randn(tokens, hidden, dtype=dtype, seed=13))

    def check_norm(result):
        want, want_sum = rms_norm_reference(x, w, EPS, residual=residual)
        torch.testing.assert_close(result[0], want, **RMS_TOL[dtype])
        assert torch.equal(result[1], want_sum)

    _replay_matches(lambda: rms_norm(x, w, EPS, residual=residual), refill_norm, check_norm)

    q, k, v, positions, cos, sin, k_cache, v_cache, slots = _rope_inputs(dtype, tokens, 128, 128)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()

    def refill_rope():
        positions.copy_(torch.randint(0, cos.shape[0], (tokens,), device="cuda"))
        slots.copy_(slots.roll(1))

    def check_rope(q_out):
        want = rope_and_write_kv_reference(q, k, v, positions, cos, sin, k_ref, v_ref, slots)
        torch.testing.assert_close(q_out, want, **ROPE_TOL[dtype])
        written = slots[slots >= 0]
        flat_k, flat_r = k_cache.view(-1, 8, 128), k_ref.view(-1, 8, 128)
        torch.testing.assert_close(flat_k[written], flat_r[written], **ROPE_TOL[dtype])

    _replay_matches(
        lambda: rope_and_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots),
        refill_rope,
        check_rope,
    )

    gate_up = _randn(tokens, 2 * 14336, dtype=dtype, seed=14)
    _replay_matches(
        lambda: silu_and_mul(gate_up),
        lambda: gate_up.copy_(_randn(tokens, 2 * 14336, dtype=dtype, seed=15)),
        lambda out: torch.testing.assert_close(
            out, silu_and_mul_reference(gate_up), **ACT_TOL[dtype]
        ),
    )


def test_rope_cache_offsets_beyond_int32():
    """A KV cache over 2**31 elements: the slot offsets must be computed in 64 bits."""
    hkv, head_dim, page_size = 8, 128, 16
    num_pages = math.ceil(2**31 / (page_size * hkv * head_dim)) + 16
    k_cache = torch.zeros(
        (num_pages, page_size, hkv, head_dim), dtype=torch.bfloat16, device="cuda"
    )
    v_cache = torch.zeros_like(k_cache)
    tokens = 4
    q = _randn(tokens, 32, head_dim, dtype=torch.bfloat16, seed=16)
    k = _randn(tokens, hkv, head_dim, dtype=torch.bfloat16, seed=17)
    v = _randn(tokens, hkv, head_dim, dtype=torch.bfloat16, seed=18)
    positions = torch.arange(tokens, device="cuda")
    cos, sin = _rope_tables(head_dim, 16)
    last = num_pages * page_size - 1
    slots = torch.tensor([last, last - 1, 3, -1], device="cuda")
    rope_and_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots)
    flat_v = v_cache.view(-1, hkv, head_dim)
    assert torch.equal(flat_v[slots[:3]], v[:3])
    k_want = _rope_float32(k, cos, sin, positions, torch.bfloat16)
    flat_k = k_cache.view(-1, hkv, head_dim)
    torch.testing.assert_close(flat_k[slots[:3]], k_want[:3], **ONE_ROUNDING_TOL[torch.bfloat16])
