"""The fused elementwise kernels of a decoder step against their torch references, on the CPU.

RMSNorm (+ residual), rotary embedding + KV-cache write, and the gated activations run as
Triton kernels under Triton's interpreter and are compared with their references; the
references in turn are checked bit for bit against the expressions of `max.nn` (norm.py,
rotary_embedding.py, mlp.py, written out here so that this test does not import max.nn).

Tolerances, per dtype, are stated beside each comparison. bfloat16 is the loosest for an
extra reason: the interpreter converts float32 to bfloat16 by truncation where the GPU
rounds to nearest even, which costs up to one more unit in the last place (ulp) here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

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
from max_kernels.normalization import (
    rms_norm,
    rms_norm_qk,
    rms_norm_qk_reference,
    rms_norm_reference,
)
from max_kernels.ragged_layout import RaggedLayout
from max_kernels.rotary_kv import rope_and_write_kv, rope_and_write_kv_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = 1e-6

# RMSNorm, Triton vs reference: the statistic's summation order differs, which can move a
# rounded intermediate (the Llama cast before the weight) by one ulp.
RMS_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=2.5e-2),
    torch.float16: dict(atol=1e-3, rtol=3e-3),
}
# Rope, Triton vs reference: the reference rounds cos/sin and each product to q's dtype
# (up to one ulp of the largest term, ~0.03 at |x| ~ 4 in bfloat16); the kernel rounds once.
ROPE_TOL = {
    torch.float32: dict(atol=1e-6, rtol=1e-6),
    torch.bfloat16: dict(atol=4e-2, rtol=2e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}
# Gated activations, Triton vs reference: the reference rounds act(gate) before the product.
ACT_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-3, rtol=2e-2),
    torch.float16: dict(atol=1e-4, rtol=2.5e-3),
}
# Triton vs the same math in float32 rounded once to the dtype: at most one ulp apart.
ONE_ROUNDING_TOL = {
    torch.float32: dict(atol=1e-6, rtol=2e-6),
    torch.bfloat16: dict(atol=1e-6, rtol=8e-3),
    torch.float16: dict(atol=1e-6, rtol=1e-3),
}


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


# ---------------------------------------------------------------------------------------
# RMSNorm


def _norm_py(x, weight, eps, gemma):
    """`RMSNorm.forward` / `GemmaRMSNorm.forward` of max/nn/norm.py, written out."""
    xf = x.float()
    if gemma:
        return (
            xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.float())
        ).to(x.dtype)
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _norm_weight(d, dtype, gemma, seed):
    # Gemma stores the weight zero-centred, Llama around one.
    w = _randn(d, seed=seed, scale=0.1)
    return (w if gemma else 1.0 + w).to(dtype)


def _assert_residual_sum(s, expected):
    if s.dtype == torch.bfloat16:
        # One ulp: the interpreter truncates the bfloat16 sum (the GPU test checks bits).
        torch.testing.assert_close(s, expected, atol=0, rtol=2**-7)
    else:
        assert torch.equal(s, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemma", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(5, 72), (3, 4, 64), (2, 3, 2, 40)])
def test_rms_norm_matches_reference(dtype, gemma, with_residual, shape):
    x = _randn(*shape, dtype=dtype, seed=1)
    residual = _randn(*shape, dtype=dtype, seed=2) if with_residual else None
    w = _norm_weight(shape[-1], dtype, gemma, seed=3)
    got = rms_norm(x, w, EPS, residual=residual, gemma=gemma)
    want = rms_norm_reference(x, w, EPS, residual=residual, gemma=gemma)
    if with_residual:
        (got, got_sum), (want, want_sum) = got, want
        _assert_residual_sum(got_sum, want_sum)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **RMS_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemma", [False, True])
def test_rms_norm_per_head_on_strided_view_into_poisoned_out(dtype, gemma):
    # Qwen3/Gemma 3 q-norm: [T, H, head_dim] heads viewed in a fused qkv row, not contiguous.
    t, h, hd = 3, 4, 48
    qkv = _randn(t, (h + 4) * hd, dtype=dtype, seed=4)
    q = qkv[:, : h * hd].view(t, h, hd)
    residual = _randn(t, h, hd, dtype=dtype, seed=5)
    assert not q.is_contiguous()
    w = _norm_weight(hd, dtype, gemma, seed=6)
    out = torch.full((t, h, hd), float("nan"), dtype=dtype)
    got, got_sum = rms_norm(q, w, EPS, residual=residual, gemma=gemma, out=out)
    want, want_sum = rms_norm_reference(q, w, EPS, residual=residual, gemma=gemma)
    assert got is out
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, **RMS_TOL[dtype])
    _assert_residual_sum(got_sum, want_sum)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemma", [False, True])
def test_rms_norm_qk_normalizes_q_and_k_heads_of_a_fused_qkv_in_one_launch(dtype, gemma):
    # Qwen3's q_norm and k_norm: 6 query and 2 key heads, read in place from the qkv row.
    t, hq, hkv, hd = 3, 6, 2, 32
    qkv = _randn(t, (hq + 2 * hkv) * hd, dtype=dtype, seed=12)
    qk = qkv[:, : (hq + hkv) * hd].view(t, hq + hkv, hd)
    wq = _norm_weight(hd, dtype, gemma, seed=13)
    wk = _norm_weight(hd, dtype, gemma, seed=14)
    want = rms_norm_qk_reference(qk, wq, wk, hq, EPS, gemma=gemma)
    # The reference is the two per-head norms the attention layer runs, bit for bit.
    assert torch.equal(want[:, :hq], rms_norm_reference(qk[:, :hq], wq, EPS, gemma=gemma))
    assert torch.equal(want[:, hq:], rms_norm_reference(qk[:, hq:], wk, EPS, gemma=gemma))
    got = rms_norm_qk(qk, wq, wk, hq, EPS, gemma=gemma)
    assert got.dtype == want.dtype and got.shape == (t, hq + hkv, hd)
    torch.testing.assert_close(got, want, **RMS_TOL[dtype])
    with pytest.raises(ValueError, match="Hq"):
        rms_norm_qk(qk, wq, wk, hq + hkv, EPS)


def test_rms_norm_float32_weight_promotes_like_torch():
    # Llama multiplies by the weight after the cast: a float32 weight gives a float32 result.
    x = _randn(4, 40, dtype=torch.bfloat16, seed=7)
    w = _norm_weight(40, torch.float32, gemma=False, seed=8)
    got = rms_norm(x, w, EPS)
    want = rms_norm_reference(x, w, EPS)
    assert got.dtype == want.dtype == torch.float32
    # The normalized value is still rounded to bfloat16 before the weight multiplies it.
    torch.testing.assert_close(got, want, **RMS_TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemma", [False, True])
def test_rms_norm_reference_is_norm_py_bit_for_bit(dtype, gemma):
    x = _randn(6, 40, dtype=dtype, seed=9)
    residual = _randn(6, 40, dtype=dtype, seed=10)
    w = _norm_weight(40, dtype, gemma, seed=11)
    assert torch.equal(rms_norm_reference(x, w, EPS, gemma=gemma), _norm_py(x, w, EPS, gemma))
    y, s = rms_norm_reference(x, w, EPS, residual=residual, gemma=gemma)
    assert torch.equal(s, x + residual)
    assert torch.equal(y, _norm_py(x + residual, w, EPS, gemma))


# ---------------------------------------------------------------------------------------
# Rotary embedding + KV-cache write

MAX_POS = 64


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _default_inv_freq(theta, dim):
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(dim, factor=8.0, low=1.0, high=4.0, old_context=32):
    # A short original context puts all three bands (kept, blended, divided) in a small dim.
    inv = _default_inv_freq(500000.0, dim)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_context / low, inv / factor, inv)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(dim, factor=4.0, original_max=32, theta=10000.0):
    def correction_dim(rotations):
        return dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(32)), 0)
    high = min(math.ceil(correction_dim(1)), dim - 1)
    ramp = torch.clamp(
        (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3), 0, 1
    )
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    inv = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * (1 - ramp)
    return inv, 0.1 * math.log(factor) + 1.0


def _rope_tables(kind, rotary_dim):
    """cos, sin [MAX_POS, rotary_dim] float32 in the rotate-half layout, scaling folded in."""
    scaling = 1.0
    if kind == "default":
        inv = _default_inv_freq(10000.0, rotary_dim)
    elif kind == "llama3":
        inv = _llama3_inv_freq(rotary_dim)
    else:
        inv, scaling = _yarn_inv_freq(rotary_dim)
    freqs = torch.outer(torch.arange(MAX_POS, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


def _rope_float32(x, cos, sin, positions, dtype):
    """The rotation in float32, rounded once: what the kernel computes, up to one ulp."""
    r = cos.shape[-1]
    c, s = cos[positions][:, None], sin[positions][:, None]
    xf = x.float()
    rotated = xf[..., :r] * c + _rotate_half(xf[..., :r]) * s
    return torch.cat((rotated, xf[..., r:]), -1).to(dtype)


def _rope_case(dtype, d, rotary_dim, kind, t=5, hq=4, hkv=2, num_pages=6, page_size=4):
    """q/k/v views of one fused qkv tensor, NaN-poisoned caches, scattered slots, one padding."""
    qkv = _randn(t, (hq + 2 * hkv) * d, dtype=dtype, seed=12)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
    g = torch.Generator().manual_seed(13)
    positions = torch.randint(0, MAX_POS, (t,), generator=g)
    num_slots = num_pages * page_size
    # The last slot is never a real target: a slot of -1 indexed Python-style would hit it.
    slots = torch.randperm(num_slots - 1, generator=g)[:t]
    slots[2] = -1
    cos, sin = _rope_tables(kind, rotary_dim)
    k_cache = torch.full((num_pages, page_size, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    return qkv, q, k, v, positions, cos, sin, k_cache, v_cache, slots


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, rotary_dim", [(64, 64), (80, 80), (64, 32), (80, 40)])
@pytest.mark.parametrize("kind", ["default", "llama3", "yarn"])
def test_rope_and_write_kv_matches_reference(dtype, d, rotary_dim, kind):
    qkv, q, k, v, positions, cos, sin, k_cache, v_cache, slots = _rope_case(
        dtype, d, rotary_dim, kind
    )
    qkv_before = qkv.clone()
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    got = rope_and_write_kv(q, k, v, positions, cos, sin, k_cache, v_cache, slots)
    want = rope_and_write_kv_reference(q, k, v, positions, cos, sin, k_ref, v_ref, slots)

    assert torch.equal(qkv, qkv_before)  # inputs are read, not rotated in place
    assert got.shape == q.shape and got.is_contiguous() and got.dtype == dtype
    torch.testing.assert_close(got, want, **ROPE_TOL[dtype])
    torch.testing.assert_close(
        got, _rope_float32(q, cos, sin, positions, dtype), **ONE_ROUNDING_TOL[dtype]
    )

    # Exactly the real tokens' slots were written; the padding row wrote nothing.
    assert torch.equal(k_cache.isnan(), k_ref.isnan())
    hkv = k.shape[1]
    flat_k, flat_v = k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d)
    assert flat_k[-1].isnan().all() and flat_v[-1].isnan().all()
    assert int((~flat_k.isnan().all(-1).all(-1)).sum()) == int((slots >= 0).sum())
    torch.testing.assert_close(k_cache, k_ref, equal_nan=True, **ROPE_TOL[dtype])
    torch.testing.assert_close(v_cache, v_ref, equal_nan=True, atol=0, rtol=0)
    real = slots >= 0
    k_once = _rope_float32(k, cos, sin, positions, dtype)
    torch.testing.assert_close(flat_k[slots[real]], k_once[real], **ONE_ROUNDING_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rope_reference_is_rotary_embedding_then_write_kv_cache(dtype, rotary_dim):
    d = 64
    qkv, q, k, v, positions, cos, sin, k_cache, v_cache, slots = _rope_case(
        dtype, d, rotary_dim, "yarn"
    )
    slots[2] = 0  # write_kv_cache has no padding rows
    k_want, v_want = k_cache.clone(), v_cache.clone()
    q_got = rope_and_write_kv_reference(q, k, v, positions, cos, sin, k_cache, v_cache, slots)

    # RotaryEmbedding.forward of max/nn/rotary_embedding.py, written out.
    c = cos[positions].unsqueeze(1).to(q.dtype)
    s = sin[positions].unsqueeze(1).to(q.dtype)
    if rotary_dim == d:
        q_want, k_rot = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    else:
        r = rotary_dim
        q_rot = q[..., :r] * c + _rotate_half(q[..., :r]) * s
        k_rot = k[..., :r] * c + _rotate_half(k[..., :r]) * s
        q_want, k_rot = torch.cat((q_rot, q[..., r:]), -1), torch.cat((k_rot, k[..., r:]), -1)
    # write_kv_cache of max_kernels/paged_attention.py, written out.
    num_slots = k_want.shape[0] * k_want.shape[1]
    k_want.view(num_slots, *k_want.shape[2:]).index_copy_(0, slots, k_rot)
    v_want.view(num_slots, *v_want.shape[2:]).index_copy_(0, slots, v)

    assert torch.equal(q_got, q_want)
    torch.testing.assert_close(k_cache, k_want, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, v_want, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [False, True])
def test_rope_reference_with_the_steps_layout_is_the_same(dtype, padding):
    """With the step's layout the reference keeps the tables' rows and the padding check
    for the step's other layers: every layer still gets its own result, bit for bit, and
    other positions or slots (another step, or a draft's tensors) are not served stale."""
    d = 64
    _, q, k, v, positions, cos, sin, k_cache, v_cache, slots = _rope_case(dtype, d, d, "llama3")
    if not padding:
        slots[2] = k_cache.shape[0] * k_cache.shape[1] - 1
    layout = RaggedLayout(
        query_start=torch.tensor([0, 5]), context_lens=torch.tensor([5]), page_table=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=slots, page_size=4, num_decode=0, query_lens=[5], context_lens_host=[5],
    )  # fmt: skip
    for layer_q, layer_k, pos in ((q, k, positions), (q.flip(0), k * 2, positions), (q, k, positions.flip(0))):
        got_k, got_v = k_cache.clone(), v_cache.clone()
        want_k, want_v = k_cache.clone(), v_cache.clone()
        got = rope_and_write_kv_reference(layer_q, layer_k, v, pos, cos, sin, got_k, got_v, slots, layout=layout)
        want = rope_and_write_kv_reference(layer_q, layer_k, v, pos, cos, sin, want_k, want_v, slots)
        assert torch.equal(got, want)
        assert torch.equal(got_k.isnan(), want_k.isnan())
        torch.testing.assert_close(got_k, want_k, equal_nan=True, atol=0, rtol=0)
        torch.testing.assert_close(got_v, want_v, equal_nan=True, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------
# Gated activations

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
@pytest.mark.parametrize("shape", [(3, 80), (2, 3, 48), (1, 2200)])
def test_gated_activation_matches_reference(dtype, act, shape):
    kernel, reference, fn = ACTIVATIONS[act]
    x = _randn(*shape, dtype=dtype, seed=14, scale=2.0)
    got = kernel(x)
    want = reference(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == dtype
    torch.testing.assert_close(got, want, **ACT_TOL[dtype])
    inter = shape[-1] // 2
    once = (fn(x[..., :inter].float()) * x[..., inter:].float()).to(dtype)
    torch.testing.assert_close(got, once, **ONE_ROUNDING_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_gated_activation_strided_rows_into_poisoned_out(dtype, act):
    kernel, reference, _ = ACTIVATIONS[act]
    wide = _randn(4, 100, dtype=dtype, seed=15, scale=2.0)
    x = wide[:, :72]  # rows 100 apart: a view, not a copy
    out = torch.full((4, 36), float("nan"), dtype=dtype)
    got = kernel(x, out=out)
    assert got is out and not out.isnan().any()
    torch.testing.assert_close(out, reference(x), **ACT_TOL[dtype])


# exp(-gate) overflowing to inf is the intended saturation; numpy warns about it.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_gated_activation_saturates_without_nan(act):
    kernel, reference, _ = ACTIVATIONS[act]
    gate = torch.tensor([-200.0, -60.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 60.0, 200.0])
    x = torch.cat((gate, torch.full_like(gate, 0.5)))[None]
    got = kernel(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference(x), **ACT_TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_activation_references_are_mlp_py_bit_for_bit(dtype):
    x = _randn(5, 2, 64, dtype=dtype, seed=16, scale=2.0)
    gate, up = x[..., :32], x[..., 32:]
    # GatedMLP.forward of max/nn/mlp.py: self.act(gate) * up.
    assert torch.equal(silu_and_mul_reference(x), F.silu(gate) * up)
    assert torch.equal(gelu_tanh_and_mul_reference(x), F.gelu(gate, approximate="tanh") * up)
