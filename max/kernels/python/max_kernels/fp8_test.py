"""The FP8 references on the CPU: what the GPU kernels are checked against (fp8_gpu_test.py).

Triton's CPU interpreter rounds float32 -> e4m3 wrongly (ties away from even, and some
values near powers of two to the wrong binade) and decodes e4m3 -> bfloat16 wrongly, so
the row quantization and the bfloat16 paths are checked only on a GPU. Decoding e4m3 to
float32 is right there, so the two weight-only kernels' indexing and masks (odd sizes, a
bias) are checked here in float32, under the interpreter.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels import fp8_linear
from max_kernels.fp8 import (
    FP8_MAX,
    SMALL_M,
    fp8_gemv,
    fp8_linear_reference,
    fp8_weight_only_linear,
    fp8_weight_only_linear_reference,
    quantize_fp8_rows_reference,
    quantize_fp8_weight,
)


def test_rows_are_scaled_to_the_largest_finite_e4m3_value():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 300, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0, 5.0])[:, None]
    codes, scales = quantize_fp8_rows_reference(x)
    assert codes.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert torch.equal(scales[[0, 1, 2, 3, 5]], x[[0, 1, 2, 3, 5]].abs().amax(dim=1) / FP8_MAX)
    assert scales[4] > 0 and not codes[4].float().any()  # an empty row: finite scale, zero codes
    decoded = codes.float() * scales[:, None]
    assert torch.isfinite(decoded).all()
    # e4m3 keeps 3 mantissa bits: each normal value within 1/16 of itself, and no value
    # further than half the smallest normal step (2^-9 of the row's maximum) from it.
    err = (decoded - x).abs()
    bound = torch.maximum(x.abs() / 16, scales[:, None] * 2.0**-9)
    assert (err <= bound * 1.0001).all()


def test_the_largest_magnitude_of_a_row_is_represented_exactly():
    x = torch.tensor([[0.5, -3.0, 1.0], [7.0, 2.0, -7.0]])
    codes, scales = quantize_fp8_rows_reference(x)
    assert codes.float().abs().amax(dim=1).tolist() == [FP8_MAX, FP8_MAX]
    assert (codes.float() * scales[:, None])[0, 1].item() == pytest.approx(-3.0, rel=1e-6)


def test_fp8_products_are_the_decoded_operands_products():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=g) * 0.1
    x = torch.randn(5, 64, generator=g)
    bias = torch.randn(32, generator=g)
    w_q, w_s = quantize_fp8_weight(w)
    x_q, x_s = quantize_fp8_rows_reference(x)
    want = (x_q.float() * x_s[:, None]) @ (w_q.float() * w_s[:, None]).t() + bias
    torch.testing.assert_close(fp8_linear_reference(x, w_q, w_s, bias), want, atol=1e-5, rtol=1e-5)
    want_wo = x @ (w_q.float() * w_s[:, None]).t() + bias
    torch.testing.assert_close(fp8_weight_only_linear_reference(x, w_q, w_s, bias), want_wo, atol=1e-5, rtol=1e-5)
    # Both are close to the float product: FP8 is a small perturbation of it.
    cos = torch.nn.functional.cosine_similarity
    assert cos(fp8_linear_reference(x, w_q, w_s).flatten(), (x @ w.t()).flatten(), dim=0) > 0.998


def test_the_dispatch_keeps_few_rows_unquantized_on_the_cpu():
    g = torch.Generator().manual_seed(2)
    w_q, w_s = quantize_fp8_weight(torch.randn(16, 32, generator=g))
    few = torch.randn(SMALL_M, 32, generator=g)
    many = torch.randn(SMALL_M + 1, 32, generator=g)
    assert torch.equal(fp8_linear(few, w_q, w_s), fp8_weight_only_linear_reference(few, w_q, w_s))
    assert torch.equal(fp8_linear(many, w_q, w_s), fp8_linear_reference(many, w_q, w_s))
    bf = few.to(torch.bfloat16)
    assert fp8_linear(bf, w_q, w_s).dtype == torch.bfloat16


@pytest.mark.parametrize("m,n,k", [(1, 48, 80), (1, 40, 600), (3, 48, 80), (5, 24, 272)])
def test_weight_only_kernels_match_their_reference_in_float32(m, n, k):
    g = torch.Generator().manual_seed(3)
    w_q, w_s = quantize_fp8_weight(torch.randn(n, k, generator=g) * 0.1)
    x = torch.randn(m, k, generator=g)
    bias = torch.randn(n, generator=g)
    for b in (None, bias):
        want = fp8_weight_only_linear_reference(x, w_q, w_s, b)
        # Small tiles, so that several programs and K steps (with a ragged last one) run.
        got = fp8_weight_only_linear(x, w_q, w_s, b, block_n=16, block_k=64)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        if m == 1:
            torch.testing.assert_close(fp8_gemv(x, w_q, w_s, b, block_k=64), want, atol=1e-5, rtol=1e-5)
