"""The AVX2 int8 kernel (`cpu_int8`) against its torch reference, and its weight format."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("MAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="max-kernels-"))

from max_kernels import cpu_int8, cpu_native

needs_kernel = pytest.mark.skipif(not cpu_int8.available(), reason="no AVX2/FMA or no C compiler here")


def test_the_kernel_builds_where_the_machine_can_build_it():
    if cpu_native.cpu_has_avx2_fma() and cpu_native.compiler():
        assert cpu_int8.available()


def test_a_q8_0_tensor_keeps_its_codes_and_scales_exactly():
    # GGUF's Q8_0: per block of 32, s = max|w| / 127 in float16 and q = round(w / s), so
    # some |q| is 127; the decoded values s q quantize back to the same s and q.
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (8, 64), generator=g, dtype=torch.int8)
    q[:, ::32] = 127
    s = (torch.rand(8, 2, generator=g) * 0.01 + 1e-4).half().float()
    codes, scales = cpu_int8.quantize((q.float().view(8, 2, 32) * s[..., None]).view(8, 64))
    assert torch.equal(codes, q) and torch.equal(scales, s)


@needs_kernel
@pytest.mark.parametrize("m", [1, 3, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(40, 96), (33, 64), (256, 576)])
def test_kernel_matches_its_reference(m, dtype, n, k):
    codes, scales = cpu_int8.quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
    x[:, 5] *= 40  # an outlier channel
    x[0, :32] = 0  # an all-zero group (scale 0)
    got = cpu_int8.int8_matmul(x, codes, scales).float()
    want = cpu_int8.int8_q16_reference(x, codes, scales).float()
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # float32 sums in another order; bfloat16's rounding
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)
    exact = x.float() @ cpu_int8.dequantize(codes, scales).t()  # int16 rows: ~1e-5 of the product
    assert float((cpu_int8.int8_q16_reference(x.float(), codes, scales) - exact).norm() / exact.norm()) < 1e-4


@needs_kernel
def test_bad_inputs_are_refused():
    codes, scales = cpu_int8.quantize(torch.randn(16, 64))
    with pytest.raises(ValueError, match="does not fit"):
        cpu_int8.int8_matmul(torch.randn(1, 96), codes, scales)
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        cpu_int8.int8_matmul(torch.randn(1, 64).half(), codes, scales)
    with pytest.raises(ValueError, match="groups of 32"):
        cpu_int8.int8_matmul(torch.randn(1, 64), codes, scales.half())
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_int8.quantize(torch.zeros(4, 40))
