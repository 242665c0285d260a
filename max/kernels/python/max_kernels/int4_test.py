"""Our int4 layout (packing, exact dequantization, codes recovered from dequantized values)
and the int4 GEMV / GEMM kernels against the reference, under Triton's interpreter on small
shapes; the dispatch of `max_kernels.int4_linear` on the CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels import int4_linear
from max_kernels.int4_gemm import int4_gemm
from max_kernels.int4_gemv import (
    TUNED,
    Int4GemvConfig,
    config_takes,
    default_config,
    int4_gemv,
    int4_kernels_take,
    row_bucket,
)
from max_kernels.int4_layout import (
    dequantize_int4,
    int4_codes_of,
    int4_linear_reference,
    pack_int4,
    quantize_int4_groups,
    unpack_int4,
)
from max_kernels.int4_word_gemv import int4_word_gemv
from max_kernels.int4_word_tile import int4_word_tile


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


@pytest.mark.parametrize(("m", "n", "k", "group", "block_k"), [(4, 40, 256, 128, 64), (16, 33, 512, 64, 64),
                                                            (3, 32, 256, 128, 128)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_factored_tile_matches_the_reference_with_any_zero_point(m, n, k, group, block_k, dtype):
    # Fractional zeros (GGUF Q4_1's exact minimum) too: the zero is applied after the dot.
    _, q, s, _ = _random_layout(n, k, group, seed=m + n)
    z = torch.rand(n, k // group, generator=torch.Generator().manual_seed(15)) * 15
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(16))
    b = torch.randn(n, generator=torch.Generator().manual_seed(17))
    want = int4_linear_reference(x, q, s, z, group, b)
    got = int4_gemm(x.to(dtype), q, s.to(dtype), z.to(dtype), group, b.to(dtype), block_m=16, block_n=32,
                    block_k=block_k, factored=True)  # fmt: skip
    tol = 2e-4 if dtype == torch.float32 else 2e-3 * want.abs().max().item()
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=1e-3 if dtype == torch.float16 else 1e-4)


def test_factored_tile_takes_slices_inside_one_group():
    _, q, s, z = _random_layout(8, 128, 32)
    with pytest.raises(ValueError, match="no longer than a group"):
        int4_gemm(torch.randn(2, 128), q, s, z, 32, block_k=64, factored=True)
    assert not config_takes(Int4GemvConfig("tile", 64, 64, factored=True), 128, 4, 32)
    assert config_takes(Int4GemvConfig("tile", 64, 64, factored=True), 128, 4, 128)


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


# The word kernel's launch shapes: one row (2-D tiles) and several (3-D), group sub-blocks
# inside a K slice and slices inside a group, split-K (with a ragged last split), no
# prefetch, a whole-row group, groups of 16.
WORD_CASES = [
    # m, n, k, group, block_n, block_k, split_k, prefetch
    (1, 37, 256, 32, 16, 64, 1, True),
    (1, 40, 512, 128, 8, 512, 1, True),
    (1, 16, 512, 64, 8, 128, 3, True),
    (1, 24, 1024, 1024, 8, 256, 2, False),
    (1, 8, 256, 16, 8, 64, 1, True),
    (3, 40, 256, 64, 16, 256, 1, False),
    (4, 20, 512, 128, 8, 128, 4, True),
    (16, 33, 512, 32, 8, 128, 2, True),
]


@pytest.mark.parametrize(("m", "n", "k", "group", "block_n", "block_k", "split_k", "prefetch"), WORD_CASES)
def test_word_gemv_matches_the_reference_in_float32(m, n, k, group, block_n, block_k, split_k, prefetch):
    _, q, s, z = _random_layout(n, k, group, seed=m + n + k)
    g = torch.Generator().manual_seed(group)
    x = torch.randn(m, k, generator=g) * 4
    b = torch.randn(n, generator=g)
    got = int4_word_gemv(x, q, s, z, group, b, block_n=block_n, block_k=block_k, split_k=split_k, prefetch=prefetch)
    torch.testing.assert_close(got, int4_linear_reference(x, q, s, z, group, b), atol=2e-4, rtol=1e-4)


def test_word_gemv_decodes_every_nibble_and_any_zero_point():
    # One code set at a time in every column position of a word, fractional zeros (GGUF
    # Q4_1 keeps the exact minimum) and large and tiny x: the subnormal decoding holds.
    n, k, group = 16, 128, 32
    codes = (torch.arange(n)[:, None] + torch.arange(k)[None, :]) % 16
    scales = torch.linspace(0.01, 2.0, n * (k // group)).reshape(n, k // group)
    zeros = torch.linspace(0.0, 15.0, n * (k // group)).reshape(n, k // group)
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(9)) * torch.logspace(-6, 4, k)
    q = pack_int4(codes)
    got = int4_word_gemv(x, q, scales, zeros, group, block_n=8, block_k=64)
    torch.testing.assert_close(got, int4_linear_reference(x, q, scales, zeros, group), atol=2e-3, rtol=1e-5)


def test_word_gemv_on_act_order_columns_is_the_product_of_the_original_weight():
    # GPTQ desc_act: the groups are not consecutive columns; the loader permutes the
    # columns into group order and the layer permutes x the same way.
    n, k, group = 24, 256, 64
    gen = torch.Generator().manual_seed(10)
    g_idx = torch.randperm(k, generator=gen) % (k // group)
    codes = torch.randint(0, 16, (n, k), generator=gen)
    scales = torch.rand(n, k // group, generator=gen) * 0.05 + 0.01
    zeros = torch.randint(0, 16, (n, k // group), generator=gen).float()
    weight = (codes - zeros[:, g_idx]) * scales[:, g_idx]
    perm = torch.argsort(g_idx, stable=True)
    x = torch.randn(1, k, generator=gen)
    got = int4_word_gemv(x[:, perm], pack_int4(codes[:, perm]), scales, zeros, group, block_n=8, block_k=128)
    torch.testing.assert_close(got, x @ weight.t(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "rows", "n"), [(torch.bfloat16, 1, 32), (torch.bfloat16, 1, 20), (torch.bfloat16, 2, 32),
                                              (torch.float16, 1, 32)])  # fmt: skip
def test_word_gemv_in_16_bits_is_within_the_output_rounding(dtype, rows, n):
    # (bfloat16, one row: x read two columns per 32-bit load; n = 20: the masked row tile)
    _, q, s, z = _random_layout(n, 512, 128, seed=11, dtype=dtype)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(12)).to(dtype)
    want = int4_linear_reference(x.float(), q, s.float(), z.float(), 128)
    got = int4_word_gemv(x, q, s, z, 128, block_n=16, block_k=256, split_k=2)
    assert got.dtype == dtype
    assert ((got.float() - want).abs() <= want.abs() * 2**-7 + 1e-3).all()


def test_the_decode_table_picks_the_kernel_per_shape_and_row_bucket(monkeypatch):
    assert [row_bucket(r) for r in (1, 2, 4, 5, 16)] == [1, 4, 4, 16, 16]
    # Without an entry: today's byte kernel for one row, the tile kernel for more.
    assert default_config(96, 256, 1).kernel == "bytes"
    assert default_config(96, 256, 3).kernel == "tile"
    words = Int4GemvConfig("words", 8, 128, split_k=2)
    monkeypatch.setitem(TUNED, (40, 256, 4), words)
    assert default_config(40, 256, 3, group_size=64) == words
    # An entry whose K slices do not line up with the groups falls back to the rule.
    assert not config_takes(Int4GemvConfig("words", 8, 4096), 8192, 1, 1536)
    assert default_config(40, 256, 3, group_size=96).kernel == "tile"
    _, q, s, z = _random_layout(40, 256, 64, seed=13)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(int4_gemv(x, q, s, z, 64), int4_linear_reference(x, q, s, z, 64), atol=2e-4, rtol=1e-4)
    assert int4_gemv(x[:0], q, s, z, 64).shape == (0, 40)
    with pytest.raises(ValueError, match="unknown int4 decode kernel"):
        Int4GemvConfig("fast", 8, 128)
    with pytest.raises(ValueError, match="byte kernel takes one row"):
        int4_gemv(x, q, s, z, 64, config=Int4GemvConfig("bytes", 8, 128))


def test_word_gemv_reads_a_row_of_a_wider_tensor():
    # One row sliced out of a wider bfloat16 buffer (an odd row stride): x is still read
    # two columns per 32-bit load.
    _, q, s, z = _random_layout(16, 256, 64, seed=21, dtype=torch.bfloat16)
    wide = torch.randn(3, 257, generator=torch.Generator().manual_seed(22)).bfloat16()
    x = wide[1:2, 1:257]
    want = int4_linear_reference(x.float(), q, s.float(), z.float(), 64)
    got = int4_word_gemv(x, q, s, z, 64, block_n=8, block_k=64)
    assert ((got.float() - want).abs() <= want.abs() * 2**-7 + 1e-3).all()


def test_word_gemv_refuses_what_it_cannot_read():
    _, q, s, z = _random_layout(8, 64, 32)
    with pytest.raises(ValueError, match="power of two"):
        int4_word_gemv(torch.randn(1, 64), q, s, z, 32, block_k=96)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        int4_word_gemv(torch.randn(17, 64), q, s, z, 32)
    _, q48, s48, z48 = _random_layout(8, 96, 48)
    with pytest.raises(ValueError, match="no whole-word sub-block"):
        int4_word_gemv(torch.randn(1, 96), q48, s48, z48, 48, block_k=64)


@pytest.mark.parametrize(("m", "n", "k", "group", "block_n", "block_k", "split_k"),
                         [(4, 40, 256, 128, 32, 64, 1), (16, 33, 512, 128, 16, 128, 3), (1, 64, 512, 256, 64, 128, 2),
                          (3, 48, 1024, 1024, 16, 256, 4)])  # fmt: skip
def test_word_tile_matches_the_reference_in_float16(m, n, k, group, block_n, block_k, split_k):
    # (float16: the interpreter's dot on bfloat16 operands is wrong, see above; bfloat16 is
    # checked on a GPU.) Fractional zeros: the zero is applied after the dot.
    _, q, s, _ = _random_layout(n, k, group, seed=m + k)
    z = torch.rand(n, k // group, generator=torch.Generator().manual_seed(18)) * 15
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(19))
    b = torch.randn(n, generator=torch.Generator().manual_seed(20))
    want = int4_linear_reference(x, q, s, z, group, b)
    got = int4_word_tile(x.half(), q, s.half(), z.half(), group, b.half(), block_n=block_n, block_k=block_k,
                         split_k=split_k)  # fmt: skip
    # float16 inputs (x, scales, zeros) and output, exact products, float32 sums.
    want16 = int4_linear_reference(x.half().float(), q, s.half().float(), z.half().float(), group, b.half().float())
    assert ((got.float() - want16).abs() <= want16.abs() * 2**-10 + 1e-3 * want.abs().max()).all()


def test_word_tile_refuses_float32_and_slices_across_groups():
    _, q, s, z = _random_layout(8, 128, 32)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        int4_word_tile(torch.randn(2, 128), q, s, z, 32, block_k=64)
    with pytest.raises(ValueError, match="inside groups of 32"):
        int4_word_tile(torch.randn(2, 128).half(), q, s.half(), z.half(), 32, block_k=64)
    # The dispatch sends float32 x of a word_tile entry to the default kernel instead.
    assert not config_takes(Int4GemvConfig("word_tile", 64, 64), 128, 4, 32)
