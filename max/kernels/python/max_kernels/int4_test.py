"""Our int4 layout (packing, exact dequantization, codes recovered from dequantized values)
and the int4 GEMV / GEMM kernels against the reference, under Triton's interpreter on small
shapes; the dispatch of `max_kernels.int4_linear` on the CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels import int4_linear
from max_kernels.int4_gemm import int4_gemm
from max_kernels.int4_gemv import int4_gemv, int4_kernels_take
from max_kernels.int4_layout import (
    dequantize_int4,
    int4_codes_of,
    int4_linear_reference,
    pack_int4,
    quantize_int4_groups,
    unpack_int4,
)


def _random_layout(n, k, group, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g)
    scales = (torch.rand(n, k // group, generator=g) * 0.05 + 0.01).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), generator=g).to(dtype)
    return codes, pack_int4(codes), scales, zeros


def test_packing_puts_even_columns_in_the_low_nibble():
    codes = torch.tensor([[1, 2, 15, 0]])
    assert pack_int4(codes).tolist() == [[0x21, 0x0F]]
    assert unpack_int4(pack_int4(codes)).tolist() == codes.tolist()


def test_dequantize_is_code_minus_zero_times_scale_per_group():
    codes, q, s, z = _random_layout(3, 8, 4)
    w = dequantize_int4(q, s, z, 4)
    assert w[1, 5].item() == pytest.approx((codes[1, 5].item() - z[1, 1].item()) * s[1, 1].item())
    assert w[2, 0].item() == pytest.approx((codes[2, 0].item() - z[2, 0].item()) * s[2, 0].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_come_back_from_dequantized_values(dtype):
    codes, q, s, z = _random_layout(16, 128, 32, seed=1)
    w = dequantize_int4(q, s, z, 32).to(dtype)
    assert torch.equal(int4_codes_of(w, s, z, 32), codes.to(torch.int32))


@pytest.mark.parametrize("symmetric", [False, True])
def test_round_to_nearest_quantization_is_within_half_a_step(symmetric):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    q, s, z = quantize_int4_groups(w, 32, symmetric)
    err = (dequantize_int4(q, s, z, 32) - w).abs()
    assert (err <= s.repeat_interleave(32, dim=1) * 0.5 + 1e-6).all()


def test_kernels_take_power_of_two_groups_and_whole_rows():
    assert all(int4_kernels_take(g) for g in (16, 32, 64, 128, 4096, 14336))
    assert not any(int4_kernels_take(g) for g in (0, 8, 48, 100))


@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [(1, 37, 128, 32), (1, 16, 256, 128), (1, 24, 1024, 1024), (3, 40, 128, 64), (16, 33, 256, 32)],
)
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_the_reference_in_float32(m, n, k, group, bias):
    _, q, s, z = _random_layout(n, k, group, seed=m * n)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(m, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    want = int4_linear_reference(x, q, s, z, group, b)
    torch.testing.assert_close(int4_gemv(x, q, s, z, group, b), want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("m", "n", "k", "group", "block_k"), [(20, 50, 128, 32, 64), (33, 64, 256, 128, 64)])
def test_gemm_matches_the_reference_in_float32(m, n, k, group, block_k):
    _, q, s, z = _random_layout(n, k, group, seed=3)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(4))
    got = int4_gemm(x, q, s, z, group, block_m=16, block_n=32, block_k=block_k)
    torch.testing.assert_close(got, int4_linear_reference(x, q, s, z, group), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "rows"), [(torch.bfloat16, 1), (torch.float16, 1), (torch.float16, 4)])
def test_16_bit_products_are_within_their_rounding(dtype, rows):
    # (The interpreter's tl.dot on bfloat16 operands returns garbage, as its e4m3 -> bfloat16
    # decoding does for fp8_test: the bfloat16 tile path is checked on a GPU, int4_gpu_test.)
    _, q, s, z = _random_layout(32, 256, 64, seed=5, dtype=dtype)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(6)).to(dtype)
    want = int4_linear_reference(x.float(), q, s.float(), z.float(), 64)
    got = int4_gemv(x, q, s, z, 64)
    assert got.dtype == dtype
    assert ((got.float() - want).abs() <= want.abs() * 2**-6 + 0.05).all()


def test_dispatch_on_the_cpu_is_the_exact_reference():
    _, q, s, z = _random_layout(8, 64, 32, seed=7)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(8))
    want = x @ dequantize_int4(q, s, z, 32).t()
    torch.testing.assert_close(int4_linear(x, q, s, z, 32), want, rtol=0, atol=0)


def test_bad_layouts_are_refused():
    _, q, s, z = _random_layout(8, 64, 32)
    with pytest.raises(ValueError, match="must be \\[N, K/G\\]"):
        int4_gemv(torch.randn(1, 64), q, s[:, :1], z, 32)
    with pytest.raises(ValueError, match="at most 16 rows"):
        int4_gemv(torch.randn(17, 64), q, s, z, 32)
