"""The AVX2 per-token kernels (`cpu_token_ops`) against the torch references they replace."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("MAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="max-kernels-"))

from max_kernels import cpu_native, cpu_token_ops, ops
from max_kernels.activation import silu_and_mul_reference
from max_kernels.normalization import rms_norm_reference
from max_kernels.rotary_kv import rope_and_write_kv_reference

needs_kernel = pytest.mark.skipif(not cpu_token_ops.available(), reason="no AVX2/FMA or no C compiler here")


def test_the_kernels_build_where_the_machine_can_build_them():
    if cpu_native.cpu_has_avx2_fma() and cpu_native.compiler():
        assert cpu_token_ops.available()


def _bf16(*shape, seed, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


@needs_kernel
@pytest.mark.parametrize("rows,d", [(1, 576), (3, 64), (40, 1024)])  # 40 rows: the threaded loop
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_the_reference(rows, d, with_residual):
    x, residual, w = _bf16(rows, d, seed=1, scale=3.0), _bf16(rows, d, seed=2), _bf16(d, seed=3)
    r = residual if with_residual else None
    got = cpu_token_ops.add_rms_norm(x, w, 1e-5, r)
    want = rms_norm_reference(x, w, 1e-5, residual=r)
    if with_residual:
        assert torch.equal(got[1], want[1])  # the residual sum: one rounding, bit for bit
        got, want = got[0], want[0]
    # The mean of squares is summed in another order: at most one bfloat16 step apart.
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6)
    assert (got != want).float().mean() < 0.01


@needs_kernel
def test_rms_norm_reads_a_strided_row_view():
    wide = _bf16(5, 192, seed=4)
    x, w = wide[:, 64:128], _bf16(64, seed=5)  # rows 192 apart, as a column slice
    torch.testing.assert_close(cpu_token_ops.add_rms_norm(x, w, 1e-6).float(), rms_norm_reference(x, w, 1e-6).float(), rtol=2**-7, atol=1e-6)


def _rope_inputs(t, hq, hkv, d, r, seed):
    qkv = _bf16(t, (hq + 2 * hkv) * d, seed=seed, scale=2.0)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    pos = torch.randint(0, 500, (t,), generator=torch.Generator().manual_seed(seed))
    freqs = torch.outer(torch.arange(512).float(), 1.0 / 10000 ** (torch.arange(0, r, 2).float() / r))
    emb = torch.cat((freqs, freqs), dim=-1)
    cache = lambda: torch.zeros(8, 16, hkv, d, dtype=torch.bfloat16)  # noqa: E731
    slots = torch.randperm(128, generator=torch.Generator().manual_seed(seed))[:t]
    return q.view(t, hq, d), k.view(t, hkv, d), v.view(t, hkv, d), pos, emb.cos(), emb.sin(), cache, slots


@needs_kernel
@pytest.mark.parametrize("t,hq,hkv,d,r", [(1, 9, 3, 64, 64), (20, 4, 2, 128, 128), (3, 4, 4, 64, 32), (2, 2, 1, 24, 12)])
def test_rope_and_kv_store_match_the_reference_bit_for_bit(t, hq, hkv, d, r):
    # Full and partial rotary, a rotary half that is not a multiple of 8 (the scalar loop),
    # and 20 tokens (the threaded loop); q, k and v are strided views of one qkv row.
    q, k, v, pos, cos, sin, cache, slots = _rope_inputs(t, hq, hkv, d, r, seed=t + d)
    slots[0] = -1  # a padding row: rotated, not stored
    k_ref, v_ref, k_got, v_got = cache(), cache(), cache(), cache()
    want = rope_and_write_kv_reference(q, k, v, pos, cos, sin, k_ref, v_ref, slots)
    assert cpu_token_ops.takes_rope(q, k, v, k_got, v_got)
    got = ops.rope_and_write_kv(q, k, v, pos, cos, sin, k_got, v_got, slots)
    assert torch.equal(got, want)
    assert torch.equal(k_got, k_ref) and torch.equal(v_got, v_ref)


@needs_kernel
@pytest.mark.parametrize("t,inter", [(1, 1536), (20, 64)])
def test_silu_and_mul_matches_the_reference(t, inter):
    x = _bf16(t, 2 * inter, seed=inter, scale=4.0)
    x[0, :8] = torch.tensor([0.0, -0.0, 100.0, -100.0, 3e38, -3e38, 1e-30, -90.0]).bfloat16()  # the clamps
    got, want = ops.silu_and_mul(x), silu_and_mul_reference(x)
    # Another exp than torch's: at most one bfloat16 step apart, and rarely that.
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-30)
    assert (got != want).float().mean() < 0.01


def test_float32_and_fp8_keep_the_references():
    x, w = torch.randn(2, 64), torch.ones(64)
    assert not cpu_token_ops.takes_rms_norm(x, w, None, False)
    assert not cpu_token_ops.takes_silu_and_mul(torch.randn(2, 64))
    assert not cpu_token_ops.takes_rms_norm(x.bfloat16(), w.bfloat16(), None, True)  # Gemma's norm
    q, k, v, *_ = _rope_inputs(1, 2, 1, 64, 64, seed=0)
    fp8 = torch.zeros(2, 16, 1, 64, dtype=torch.float8_e4m3fn)
    assert not cpu_token_ops.takes_rope(q, k, v, fp8, fp8)
    assert not cpu_token_ops.takes_rope(q.float(), k.float(), v.float(), fp8.float(), fp8.float())
