"""Our int8 layout (exact dequantization; GGUF Q8_0 blocks kept code for code) and the int8
GEMV / GEMM kernels against the reference, under Triton's interpreter on small shapes; the
dispatch of `max_kernels.int8_linear` on the CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from max_kernels import int8_linear
from max_kernels.int8_gemm import int8_gemm
from max_kernels.int8_gemv import int8_gemv, int8_kernels_take
from max_kernels.int8_layout import dequantize_int8, int8_linear_reference, quantize_int8_groups


def _random_layout(n, k, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (n, k), generator=g).to(torch.int8)
    scales = (torch.rand(n, k // group, generator=g) * 0.05 + 0.01).to(torch.float16)
    return codes, scales


def test_dequantize_is_code_times_scale_per_group():
    codes, scales = _random_layout(3, 64, 32)
    w = dequantize_int8(codes, scales, 32)
    assert w[1, 40].item() == codes[1, 40].item() * scales[1, 1].float().item()
    assert w[2, 3].item() == codes[2, 3].item() * scales[2, 0].float().item()


def test_q8_0_blocks_keep_their_codes_and_scales():
    """A weight decoded from GGUF Q8_0 (by the `gguf` package) re-quantizes to its own codes."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(0).standard_normal((8, 128)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType.Q8_0).reshape(8, 4, 34)
    decoded = torch.from_numpy(dequantize(raw.reshape(8, -1), GGMLQuantizationType.Q8_0))
    codes, scales = quantize_int8_groups(decoded, 32)
    assert torch.equal(codes, torch.from_numpy(raw[:, :, 2:].copy().view(np.int8).reshape(8, 128)))
    assert torch.equal(scales, torch.from_numpy(raw[:, :, :2].copy().view(np.float16).reshape(8, 4)))
    assert torch.equal(dequantize_int8(codes, scales, 32), decoded)


def test_round_to_nearest_is_within_half_a_step():
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(2))
    codes, scales = quantize_int8_groups(w, 32)
    err = (dequantize_int8(codes, scales, 32) - w).abs()
    assert (err <= scales.float().repeat_interleave(32, dim=1) * 0.5 + 1e-6).all()
    assert err.max() > 0  # not vacuous: random values are not on the grid


@pytest.mark.parametrize(("n", "k", "group"), [(24, 256, 32), (10, 96, 32), (16, 128, 64), (8, 64, 16)])
@pytest.mark.parametrize("rows", [1, 3, 16, 37])
def test_kernels_match_the_reference(n, k, group, rows):
    codes, scales = _random_layout(n, k, group, seed=n + k + rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    bias = torch.randn(n)
    want = int8_linear_reference(x, codes, scales, group, bias)
    got = int8_gemv(x, codes, scales, group, bias, block_k=64) if rows <= 16 else int8_gemm(x, codes, scales, group, bias, block_m=16, block_n=16, block_k=64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert want.abs().max() > 1  # not vacuous


def test_gemv_slices_longer_than_the_row_are_masked():
    codes, scales = _random_layout(8, 96, 32, seed=5)
    x = torch.randn(1, 96)
    torch.testing.assert_close(int8_gemv(x, codes, scales, 32, block_k=128), int8_linear_reference(x, codes, scales, 32), rtol=1e-5, atol=1e-4)


def test_cpu_dispatch_is_the_reference():
    codes, scales = _random_layout(4, 64, 32)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.equal(int8_linear(x, codes, scales, 32), int8_linear_reference(x, codes, scales, 32))
    assert int8_kernels_take(32) and not int8_kernels_take(24)
