"""The AVX2 decode attention kernel (`cpu_decode_attention`) against its torch reference."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("MAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="max-kernels-"))

from max_kernels import cpu_decode_attention, cpu_native

needs_kernel = pytest.mark.skipif(not cpu_decode_attention.available(), reason="no AVX2/FMA or no C compiler here")


def test_the_kernel_builds_where_the_machine_can_build_it():
    if cpu_native.cpu_has_avx2_fma() and cpu_native.compiler():
        assert cpu_decode_attention.available()


def _inputs(b, hq, hkv, d, keys, seed):
    g = torch.Generator().manual_seed(seed)
    pages, page_size = 3 * b * keys // 16 + 4, 16
    k = torch.randn(pages, page_size, hkv, d, generator=g).bfloat16()
    v = torch.randn(pages, page_size, hkv, d, generator=g).bfloat16()
    slots = torch.randperm(pages * page_size, generator=g)[: b * keys].view(b, keys)  # scattered
    q = (torch.randn(b, hq, d, generator=g) * 2).bfloat16()
    return q, k, v, slots


@needs_kernel
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (4, 4, 128), (8, 1, 16)])
def test_kernel_matches_its_reference(hq, hkv, d):
    q, k, v, slots = _inputs(4, hq, hkv, d, keys=70, seed=hq + d)
    # Whole contexts, a sliding window's range, a single key, and a request of 70 keys.
    lo = torch.tensor([0, 20, 33, 0], dtype=torch.int32)
    hi = torch.tensor([44, 60, 33, 69], dtype=torch.int32)
    got = cpu_decode_attention.decode_attention(q, k, v, slots, lo, hi, d**-0.5)
    want = cpu_decode_attention.decode_attention_reference(q, k, v, slots, lo, hi, d**-0.5)
    assert got.dtype == torch.bfloat16
    # Both in float32, rounded once; the sums' order differs.
    torch.testing.assert_close(got.float(), want.float(), atol=8e-3, rtol=8e-3)


@needs_kernel
def test_bad_inputs_are_refused():
    q, k, v, slots = _inputs(2, 4, 2, 16, keys=8, seed=0)
    lo, hi = torch.zeros(2, dtype=torch.int32), torch.full((2,), 7, dtype=torch.int32)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_decode_attention.decode_attention(q[:, :3], k, v, slots, lo, hi, 1.0)
    with pytest.raises(ValueError, match="2 requests"):
        cpu_decode_attention.decode_attention(q, k, v, slots[:1], lo, hi, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_decode_attention.decode_attention(q, k.transpose(0, 1), v.transpose(0, 1), slots, lo, hi, 1.0)
    assert not cpu_decode_attention.takes(q.float(), k)
