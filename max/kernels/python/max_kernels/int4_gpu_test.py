"""The int4 GEMV and GEMM on a CUDA GPU at the Llama-3.1-8B shapes, against the reference
(the weight dequantized exactly in float32, then the float32 product), in bfloat16 and
float16, including a CUDA-graph replay of the decode path.

Run: `PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/kernels/python/max_kernels/int4_gpu_test.py`
"""

import pytest
import torch

from max_kernels import int4_linear
from max_kernels.cuda_graph import capture_graph
from max_kernels.int4_gemm import int4_gemm
from max_kernels.int4_gemv import int4_gemv
from max_kernels.int4_layout import dequantize_int4, pack_int4
from max_kernels.int4_word_gemv import int4_word_gemv
from max_kernels.int4_word_tile import int4_word_tile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _layout(n, k, group, dtype):
    g = torch.Generator(device="cuda").manual_seed(n + k + group)
    codes = torch.randint(0, 16, (n, k), device="cuda", generator=g)
    scales = (torch.rand(n, k // group, device="cuda", generator=g) * 0.02 + 0.002).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), device="cuda", generator=g).to(dtype)
    return pack_int4(codes), scales, zeros


def _want(x, q, s, z, group):
    return x.float() @ dequantize_int4(q, s, z, group).t()


def _close(got, want, dtype):
    # The tile kernel rounds each dequantized weight to the 16-bit type before its dot (the
    # reference keeps them in float32), then sums in float32 and rounds the output once:
    # relative error of the output's rounding, plus the weights' rounding summed over K
    # with random signs (a few units of the 16-bit type times the largest output).
    unit = 2**-7 if dtype == torch.bfloat16 else 2**-10
    scale = want.abs().amax()
    diff = (got.float() - want).abs()
    assert (diff <= want.abs() * unit + scale * 2 * unit).all(), diff.max().item()
    assert diff.mean() <= 2 * unit * want.abs().mean()


SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1000, 256)]


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_matches_the_reference(n, k, group, rows, dtype):
    q, s, z = _layout(n, k, group, dtype)
    x = torch.randn(rows, k, device="cuda").to(dtype)
    got = int4_gemv(x, q, s, z, group)
    assert got.dtype == dtype and got.shape == (rows, n)
    _close(got, _want(x, q, s, z, group), dtype)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("rows", [17, 300, 2048])
def test_gemm_matches_the_reference(n, k, rows):
    q, s, z = _layout(n, k, 128, torch.bfloat16)
    x = torch.randn(rows, k, device="cuda").bfloat16()
    bias = torch.randn(n, device="cuda").bfloat16()
    _close(int4_gemm(x, q, s, z, 128, bias), _want(x, q, s, z, 128) + bias.float(), torch.bfloat16)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("rows", [4, 16, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_factored_tile_matches_the_reference(n, k, rows, dtype):
    q, s, z = _layout(n, k, 128, dtype)
    x = torch.randn(rows, k, device="cuda").to(dtype)
    got = int4_gemm(x, q, s, z, 128, block_m=16 if rows <= 16 else 64, block_n=128, block_k=64, factored=True)
    _close(got, _want(x, q, s, z, 128), dtype)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("rows", [1, 4, 16, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("block_n", "block_k", "warps", "split_k"), [(128, 128, 4, 1), (64, 128, 8, 4)])
def test_word_tile_matches_the_reference(n, k, rows, dtype, block_n, block_k, warps, split_k):
    q, s, z = _layout(n, k, 128, dtype)
    x = torch.randn(rows, k, device="cuda").to(dtype)
    got = int4_word_tile(x, q, s, z, 128, block_n=block_n, block_k=block_k, num_warps=warps, split_k=split_k)
    _close(got, _want(x, q, s, z, 128), dtype)


def test_whole_row_groups_and_the_dispatch():
    q, s, z = _layout(512, 4096, 4096, torch.bfloat16)
    x = torch.randn(1, 4096, device="cuda").bfloat16()
    _close(int4_linear(x, q, s, z, 4096), _want(x, q, s, z, 4096), torch.bfloat16)


def test_decode_replays_from_a_cuda_graph():
    q, s, z = _layout(4096, 4096, 128, torch.bfloat16)
    x = torch.randn(1, 4096, device="cuda").bfloat16()
    graph, y = capture_graph(lambda: int4_linear(x, q, s, z, 128))
    x.copy_(torch.randn(1, 4096, device="cuda").bfloat16())
    graph.replay()
    torch.cuda.synchronize()
    _close(y, _want(x, q, s, z, 128), torch.bfloat16)


WORD_CONFIGS = [(16, 1024, 4, 1), (32, 512, 4, 2), (64, 256, 8, 4)]


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("rows", [1, 4, 16])
@pytest.mark.parametrize(("block_n", "block_k", "warps", "split_k"), WORD_CONFIGS)
def test_word_gemv_matches_the_reference(n, k, group, rows, block_n, block_k, warps, split_k):
    q, s, z = _layout(n, k, group, torch.bfloat16)
    x = torch.randn(rows, k, device="cuda").bfloat16()
    got = int4_word_gemv(x, q, s, z, group, block_n=block_n, block_k=block_k, num_warps=warps, split_k=split_k)
    assert got.shape == (rows, n)
    _close(got, _want(x, q, s, z, group), torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_word_gemv_in_other_dtypes(dtype):
    q, s, z = _layout(4096, 4096, 128, dtype)
    x = torch.randn(1, 4096, device="cuda").to(dtype)
    got = int4_word_gemv(x, q, s, z, 128, split_k=2)
    want = _want(x, q, s, z, 128)
    assert got.dtype == dtype
    if dtype == torch.float32:  # the CUDA-core kernel keeps float32 exact to its sums' rounding
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    else:
        _close(got, want, dtype)


def test_split_word_gemv_replays_from_a_cuda_graph():
    q, s, z = _layout(4096, 14336, 128, torch.bfloat16)
    x = torch.randn(1, 14336, device="cuda").bfloat16()
    graph, y = capture_graph(lambda: int4_word_gemv(x, q, s, z, 128, block_n=32, block_k=512, split_k=4))
    for _ in range(3):  # the arrival counters are left at zero for the next replay
        x.copy_(torch.randn(1, 14336, device="cuda").bfloat16())
        graph.replay()
        torch.cuda.synchronize()
        _close(y, _want(x, q, s, z, 128), torch.bfloat16)
