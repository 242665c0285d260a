"""The int8 GEMV and GEMM on a CUDA GPU at the Llama-3.1-8B shapes, against the reference
(the weight dequantized exactly in float32, then the float32 product), in bfloat16 and
float16, including a CUDA-graph replay of the decode path.

Run: `PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/kernels/python/max_kernels/int8_gpu_test.py`
"""

import pytest
import torch

from max_kernels import int8_linear
from max_kernels.cuda_graph import capture_graph
from max_kernels.int8_gemm import int8_gemm
from max_kernels.int8_gemv import int8_gemv
from max_kernels.int8_layout import dequantize_int8

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layout(n, k, group):
    g = torch.Generator(device="cuda").manual_seed(n + k + group)
    codes = torch.randint(-127, 128, (n, k), device="cuda", generator=g).to(torch.int8)
    scales = (torch.rand(n, k // group, device="cuda", generator=g) * 2e-4 + 2e-5).half()
    return codes, scales


def _want(x, codes, scales, group):
    return x.float() @ dequantize_int8(codes, scales, group).t()


def _close(got, want, dtype):
    # As int4's: the tile kernel rounds each dequantized weight to the 16-bit type before its
    # dot, then sums in float32 and rounds the output once.
    unit = 2**-7 if dtype == torch.bfloat16 else 2**-10
    scale = want.abs().amax()
    diff = (got.float() - want).abs()
    assert (diff <= want.abs() * unit + scale * 2 * unit).all(), diff.max().item()
    assert diff.mean() <= 2 * unit * want.abs().mean()


SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1000, 256)]


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_matches_the_reference(n, k, rows, dtype):
    codes, scales = _layout(n, k, 32)
    x = torch.randn(rows, k, device="cuda").to(dtype)
    got = int8_gemv(x, codes, scales, 32)
    assert got.dtype == dtype and got.shape == (rows, n)
    _close(got, _want(x, codes, scales, 32), dtype)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("rows", [17, 300, 2048])
def test_gemm_matches_the_reference(n, k, rows):
    codes, scales = _layout(n, k, 32)
    x = torch.randn(rows, k, device="cuda").bfloat16()
    bias = torch.randn(n, device="cuda").bfloat16()
    _close(int8_gemm(x, codes, scales, 32, bias), _want(x, codes, scales, 32) + bias.float(), torch.bfloat16)


def test_decode_replays_from_a_cuda_graph():
    codes, scales = _layout(4096, 4096, 32)
    x = torch.randn(1, 4096, device="cuda").bfloat16()
    graph, y = capture_graph(lambda: int8_linear(x, codes, scales, 32))
    x.copy_(torch.randn(1, 4096, device="cuda").bfloat16())
    graph.replay()
    torch.cuda.synchronize()
    _close(y, _want(x, codes, scales, 32), torch.bfloat16)


def test_decode_reads_the_weight_near_the_copy_rate():
    """Batch-1 GEMV at the 8B MLP's gate/up shape: bytes read (codes + scales) over time,
    printed against a device-to-device copy of the same bytes (no threshold: a report)."""
    codes, scales = _layout(28672, 4096, 32)
    x = torch.randn(1, 4096, device="cuda").bfloat16()
    nbytes = codes.numel() + 2 * scales.numel()
    scratch = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    flat = codes.view(torch.uint8).flatten()

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 20

    gemv = timed(lambda: int8_gemv(x, codes, scales, 32))
    copy = timed(lambda: scratch[: flat.numel()].copy_(flat))
    print(f"int8 GEMV 28672x4096: {gemv * 1e3:.1f} us, {nbytes / gemv / 1e6:.0f} GB/s; copy {flat.numel() * 2 / copy / 1e6:.0f} GB/s")
