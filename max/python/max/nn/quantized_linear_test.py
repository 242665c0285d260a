"""Weight-only quantized linears against their dequantized weights, and the swap pass."""

import pytest
import torch
from torch import nn

from max.errors import MaxError
from max.nn.parallel import RowParallelLinear, TensorParallel
from max.nn.quantized_linear import (
    Int4WeightOnlyLinear,
    Int8GroupLinear,
    Int8WeightOnlyLinear,
    int4_kernel,
    quantize_int4,
    quantize_int8,
    quantize_linears,
    quantized_linear,
)
from max_kernels import cpu_int4, cpu_int8


def _weight(n, k, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_int8_layer_matches_its_dequantized_weight():
    w, bias = _weight(96, 64), torch.randn(96)
    x = torch.randn(5, 64).bfloat16()
    layer = Int8WeightOnlyLinear(w, bias, torch.bfloat16)
    codes, scales = quantize_int8(w)
    reference = (
        x.float() @ (codes.float() * scales.bfloat16().float()[:, None]).t()
        + bias.bfloat16().float()
    )
    assert layer(x).dtype == torch.bfloat16
    assert _rel(layer(x), reference) < 1e-2
    assert _rel(layer(x), x.float() @ w.t() + bias) < 2e-2  # and the float weight, to int8's error


def test_int4_layer_matches_its_dequantized_weight():
    w = _weight(64, 128)
    x = torch.randn(3, 128).bfloat16()
    layer = Int4WeightOnlyLinear(w, None, torch.bfloat16, kernel="torch")
    codes, scales, zeros = quantize_int4(w)
    sz = layer.scales_and_zeros.float()  # [K/32, N, 2], as torch's kernel reads them
    deq = (codes.view(64, 4, 32).float() - 8) * sz[..., 0].t()[:, :, None] + sz[..., 1].t()[
        :, :, None
    ]
    assert _rel(layer(x), x.float() @ deq.reshape(64, 128).t()) < 1e-2
    assert _rel(layer(x), x.float() @ w.t()) < 0.1  # and the float weight, to int4's error


@pytest.mark.skipif(not cpu_int4.available(), reason="no AVX2/FMA or no C compiler here")
def test_int4_layer_on_our_avx2_kernel_matches_torch_s():
    w, bias = _weight(96, 128), torch.randn(96)
    ours = Int4WeightOnlyLinear(w, bias, torch.bfloat16, kernel="native")
    theirs = Int4WeightOnlyLinear(w, bias, torch.bfloat16, kernel="torch")
    assert ours.kernel == "native" and "native kernel" in repr(ours)
    for rows in (1, 3, 7):
        x = torch.randn(2, rows, 128).bfloat16()
        y = ours(x)
        assert y.shape == (2, rows, 96) and y.dtype == torch.bfloat16
        # The same codes; theirs rounds the scales and zeros to bfloat16, ours the rows to int16.
        assert _rel(y, theirs(x)) < 1.5e-2
    # Float32 layers (and other group sizes) stay on torch's kernel.
    assert Int4WeightOnlyLinear(w, None, torch.float32, kernel="native").kernel == "torch"


def test_the_int4_kernel_override_is_checked(monkeypatch):
    int4_kernel.cache_clear()
    monkeypatch.setenv("MAX_CPU_INT4_KERNEL", "fast")
    try:
        with pytest.raises(MaxError, match="choose from torch, native"):
            int4_kernel()
        monkeypatch.setenv("MAX_CPU_INT4_KERNEL", "torch")
        int4_kernel.cache_clear()
        assert int4_kernel() == "torch"
    finally:
        int4_kernel.cache_clear()


def test_int4_recovers_the_codes_of_q4_1_blocks_exactly():
    # A Q4_1 block: 32 values d * q + m with q spanning 0..15; min/max re-quantization gives
    # back q, with scale d and zero m + 8d.
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (16, 64), generator=g)
    q[:, ::32], q[:, 1::32] = 0, 15
    d = torch.rand(16, 2, 1, generator=g) * 0.01 + 0.001
    m = -torch.rand(16, 2, 1, generator=g) * 0.1
    w = (q.view(16, 2, 32).float() * d + m).view(16, 64)
    codes, scales, zeros = quantize_int4(w)
    assert torch.equal(codes, q.to(torch.int32))
    torch.testing.assert_close(scales, d.squeeze(-1).t(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(zeros, (m + 8 * d).squeeze(-1).t(), rtol=1e-5, atol=1e-7)


def test_three_dimensional_inputs_and_bias():
    w, bias = _weight(32, 64), torch.randn(32)
    x = torch.randn(2, 3, 64).bfloat16()
    for layer in (
        Int8WeightOnlyLinear(w, bias, torch.bfloat16),
        Int4WeightOnlyLinear(w, bias, torch.bfloat16),
    ):
        y = layer(x)
        assert y.shape == (2, 3, 32)
        torch.testing.assert_close(y[1], layer(x[1]))


def test_strided_inputs_are_read_as_their_values():
    # A column slice of a wider activation (rows 96 apart, as DeepSeek-V2's latent split
    # makes) and a transposed one (features 5 apart): the packed kernels need dense rows
    # (the int8 one refused the second and crashed on a slice in the MLA layer).
    w = _weight(32, 64)
    for x in (torch.randn(5, 96).bfloat16()[:, 16:80], torch.randn(64, 5).bfloat16().t()):
        assert not x.is_contiguous()
        for layer in (Int8WeightOnlyLinear(w, None, torch.bfloat16), Int4WeightOnlyLinear(w, None, torch.bfloat16)):
            assert torch.equal(layer(x), layer(x.contiguous()))


def test_int4_falls_back_to_int8_where_the_kernel_cannot_pack_the_shape():
    # int8 per channel, or in groups of 32 where our kernels run (`int8_groups`).
    assert isinstance(
        quantized_linear(_weight(24, 64), None, "int4", torch.bfloat16), (Int8WeightOnlyLinear, Int8GroupLinear)
    )
    assert isinstance(
        quantized_linear(_weight(32, 48), None, "int4", torch.bfloat16), Int8WeightOnlyLinear
    )
    assert isinstance(
        quantized_linear(_weight(32, 64), None, "int4", torch.bfloat16), Int4WeightOnlyLinear
    )
    with pytest.raises(MaxError, match="unknown weight-only quantization"):
        quantized_linear(_weight(32, 64), None, "int3", torch.bfloat16)


class _Block(nn.Module):
    unquantized_children = ("router",)

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = RowParallelLinear(128, 64, False, TensorParallel())
        self.router = nn.Linear(64, 16, bias=False)
        self.norm = nn.LayerNorm(64)


def test_quantize_linears_swaps_layers_and_keeps_the_router_and_wide_layers():
    net = nn.Sequential(_Block(), _Block())
    x = torch.randn(4, 64)
    before = net[1].down(net[1].up(x))
    count = quantize_linears(net, "int4", torch.bfloat16, keep_int8={"1.up"})
    assert count == 4
    assert isinstance(net[0].up, Int4WeightOnlyLinear) and isinstance(
        net[0].down, Int4WeightOnlyLinear
    )
    assert isinstance(net[1].up, (Int8WeightOnlyLinear, Int8GroupLinear))  # per channel, or groups on AVX2
    assert isinstance(net[0].router, nn.Linear) and isinstance(net[0].norm, nn.LayerNorm)
    assert _rel(net[1].down(net[1].up(x.bfloat16())), before) < 0.1


def test_quantize_linears_refuses_tensor_parallel_layers():
    net = nn.Sequential(RowParallelLinear(64, 32, False, TensorParallel(0, 2)))
    with pytest.raises(MaxError, match="tensor parallelism"):
        quantize_linears(net, "int8", torch.bfloat16)


@pytest.mark.skipif(not cpu_int8.available(), reason="no AVX2/FMA or no C compiler here")
def test_int8_group_layer_matches_its_dequantized_weight():
    w, bias = _weight(96, 128), torch.randn(96)
    layer = Int8GroupLinear(w, bias, torch.bfloat16)
    x = torch.randn(2, 3, 128).bfloat16()
    y = layer(x)
    assert y.shape == (2, 3, 96) and y.dtype == torch.bfloat16 and "groups of 32" in repr(layer)
    want = x.float() @ cpu_int8.dequantize(layer.weight_int8, layer.group_scales).t() + bias.bfloat16().float()
    assert _rel(y, want) < 1e-2
    # Groups of 32 are finer than one scale a row: closer to the float weight.
    assert _rel(cpu_int8.dequantize(layer.weight_int8, layer.group_scales), w) < _rel(
        Int8WeightOnlyLinear(w, None, torch.float32).scales[:, None] * Int8WeightOnlyLinear(w, None, torch.float32).weight_int8, w
    )
