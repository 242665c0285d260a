"""The AVX2 int4 kernel (`cpu_int4`) against its torch reference, and its weight format."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("MAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="max-kernels-"))

from max_kernels import cpu_int4, cpu_native

needs_kernel = pytest.mark.skipif(not cpu_int4.available(), reason="no AVX2/FMA or no C compiler here")


def _weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scales = torch.rand(k // 32, n, generator=g) * 0.02 + 1e-3
    zeros = torch.randn(k // 32, n, generator=g) * 0.02
    return codes, scales, zeros


def test_the_kernel_builds_where_the_machine_can_build_it():
    # A broken build must fail here, not quietly fall back to torch's kernel everywhere.
    if cpu_native.cpu_has_avx2_fma() and cpu_native.compiler():
        assert cpu_int4.available()


def test_packing_keeps_every_code_scale_and_zero():
    codes, scales, zeros = _weight(24, 96, seed=0)
    packed, pairs = cpu_int4.pack(codes, scales, zeros)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 3, 16)
    want = (scales.t().repeat_interleave(32, 1) * (codes - 8) + zeros.t().repeat_interleave(32, 1))
    torch.testing.assert_close(cpu_int4.unpack(packed, pairs), want, atol=1e-7, rtol=0)


@needs_kernel
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(40, 96), (33, 64), (256, 576)])
def test_kernel_matches_its_reference(m, dtype, n, k):
    packed, pairs = cpu_int4.pack(*_weight(n, k, seed=n + k))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
    x[:, 5] *= 40  # an outlier channel: its group's scale is set by it
    x[0, :32] = 0  # an all-zero group (scale 0)
    got = cpu_int4.int4_matmul(x, packed, pairs).float()
    want = cpu_int4.int4_q16_reference(x, packed, pairs).float()
    # The same integer dots; float32 sums in another order (and one bfloat16 rounding).
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)


def test_int16_rows_cost_less_than_bfloat16_rows():
    # Rows in int16 per group of 32 add ~1e-5 to the product (against the exact int4
    # weight), under what rounding the rows to bfloat16 costs (~2e-3).
    packed, pairs = cpu_int4.pack(*_weight(64, 256, seed=3))
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(4))
    exact = x @ cpu_int4.unpack(packed, pairs).t()
    got = cpu_int4.int4_q16_reference(x, packed, pairs)
    assert float((got - exact).norm() / exact.norm()) < 1e-4


@needs_kernel
def test_bad_inputs_are_refused():
    packed, pairs = cpu_int4.pack(*_weight(16, 64, seed=5))
    with pytest.raises(ValueError, match="does not fit"):
        cpu_int4.int4_matmul(torch.randn(1, 96), packed, pairs)
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        cpu_int4.int4_matmul(torch.randn(1, 64).half(), packed, pairs)
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_int4.pack(torch.zeros(4, 40, dtype=torch.int32), torch.zeros(1, 4), torch.zeros(1, 4))
