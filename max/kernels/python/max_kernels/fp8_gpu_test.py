"""FP8 products on a CUDA GPU, against their references.

The row quantization kernel must give the reference's codes and scales bit for bit (the GPU
rounds float32 -> e4m3 to nearest even, as torch does; Triton's CPU interpreter does not,
so this is checked only here). `fp8_linear` (tensor cores, `torch._scaled_mm`) must match
the float32 emulation up to the order of its sums, eagerly and replayed from a CUDA graph.
"""

import pytest
import torch

from max_kernels.cuda_graph import capture_graph
from max_kernels.fp8 import (
    fp8_gemv,
    fp8_linear,
    fp8_linear_reference,
    fp8_supported,
    fp8_weight_only_linear,
    fp8_weight_only_linear_reference,
    quantize_fp8_rows,
    quantize_fp8_rows_reference,
    quantize_fp8_weight,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or not fp8_supported(torch.device("cuda")),
    reason="needs FP8 tensor cores (compute capability 8.9+)",
)


def _randn(*shape, dtype=torch.bfloat16, seed=0, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 4096), (7, 14336), (300, 4096), (8192, 128), (3, 40)])
def test_row_quantization_is_the_reference_bit_for_bit(dtype, shape):
    x = _randn(*shape, dtype=dtype, seed=shape[0], scale=3.0)
    x[0, : shape[1] // 2] = 0  # a half-empty row
    if shape[0] > 2:
        x[2] = 0  # an empty row: scale clamped, codes 0
    q, s = quantize_fp8_rows(x)
    rq, rs = quantize_fp8_rows_reference(x)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))


@needs_fp8
@pytest.mark.parametrize("m", [1, 4, 33, 256, 2048])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (256, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_fp8_linear_matches_the_float32_emulation(m, n, k, bias):
    w_q, w_s = quantize_fp8_weight(_randn(n, k, seed=1, scale=0.02))
    x = _randn(m, k, seed=2)
    b = _randn(n, seed=3) if bias else None
    got = fp8_linear(x, w_q, w_s, b).float()
    want = fp8_linear_reference(x, w_q, w_s, b).float()
    # Same codes and scales; only the order of the k-sums (and bfloat16 rounding) differs.
    torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=2e-2)


@needs_fp8
def test_fp8_linear_replays_from_a_cuda_graph():
    w_q, w_s = quantize_fp8_weight(_randn(512, 256, seed=4, scale=0.05))
    x = _randn(8, 256, seed=5)
    eager = fp8_linear(x, w_q, w_s)
    graph, out = capture_graph(lambda: fp8_linear(x, w_q, w_s))
    x.copy_(_randn(8, 256, seed=6))
    graph.replay()
    torch.testing.assert_close(out, fp8_linear(x, w_q, w_s), atol=0, rtol=0)
    assert not torch.equal(out, eager)


@needs_fp8
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (48, 80)])
def test_fp8_weight_only_matches_its_reference(dtype, m, n, k):
    w_q, w_s = quantize_fp8_weight(_randn(n, k, seed=8, scale=0.02))
    x = _randn(m, k, dtype=dtype, seed=9)
    b = _randn(n, dtype=dtype, seed=10)
    for bias in (None, b):
        got = fp8_weight_only_linear(x, w_q, w_s, bias).float()
        want = fp8_weight_only_linear_reference(x, w_q, w_s, bias).float()
        # The same float32 sums in another order, rounded once to x's dtype.
        tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)


@needs_fp8
def test_fp8_dispatch_is_weight_only_up_to_small_m_rows():
    from max_kernels import fp8_linear as dispatched
    from max_kernels.fp8 import SMALL_M

    w_q, w_s = quantize_fp8_weight(_randn(256, 512, seed=11, scale=0.05))
    cases = ((1, fp8_weight_only_linear_reference), (SMALL_M, fp8_weight_only_linear_reference), (SMALL_M + 1, fp8_linear_reference))
    for m, ref in cases:
        x = _randn(m, 512, seed=12)
        want = ref(x, w_q, w_s).float()
        torch.testing.assert_close(dispatched(x, w_q, w_s).float(), want, atol=2e-2 * want.abs().max().item(), rtol=2e-2)


@needs_fp8
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (48, 80)])
def test_fp8_gemv_matches_the_weight_only_reference(dtype, n, k):
    w_q, w_s = quantize_fp8_weight(_randn(n, k, seed=13, scale=0.02))
    x = _randn(1, k, dtype=dtype, seed=14)
    b = _randn(n, dtype=dtype, seed=15)
    for bias in (None, b):
        got = fp8_gemv(x, w_q, w_s, bias).float()
        want = fp8_weight_only_linear_reference(x, w_q, w_s, bias).float()
        tol = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)
