"""The one-row product (`gemv`) against `F.linear` on the CPU, under Triton's interpreter,
and the dispatch of `max_kernels.linear` (the GPU-only kernel never runs on the CPU path).

The interpreter rounds float32 -> bfloat16 by truncation, so bfloat16 outputs are checked to
one bfloat16 unit; float32 checks the indexing, masks and bias exactly enough to see a
misplaced row or column.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn.functional as F

from max_kernels import linear
from max_kernels.gemv import GemvConfig, default_config, gemv, gemv_reference
from max_kernels.pdl import pdl_enabled, pdl_launch


@pytest.mark.parametrize(
    ("n", "k", "config"),
    [
        (37, 100, GemvConfig(4, 32)),  # ragged N and K, several K slices
        (64, 256, None),  # the default configuration: one slice
        (5, 4096, GemvConfig(2, 1024, 4, evict_first=False)),
        (16, 48, GemvConfig(16, 16, 2)),  # one program per 16 features, K in three slices
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_f_linear_in_float32(n, k, config, bias):
    g = torch.Generator().manual_seed(n * k)
    x = torch.randn(1, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    torch.testing.assert_close(gemv(x, w, b, config=config), F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_gemv_in_bfloat16_is_within_one_unit_of_the_float32_product():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 300, generator=g).bfloat16()
    w = torch.randn(70, 300, generator=g).bfloat16()
    want = F.linear(x.float(), w.float())
    got = gemv(x, w, config=GemvConfig(4, 128))
    assert got.dtype == torch.bfloat16
    # One bfloat16 unit (2^-7 relative) covers truncation plus the float32 sum order.
    assert ((got.float() - want).abs() <= want.abs() * 2**-7 + 1e-3).all()


def test_gemv_reads_a_strided_row_and_writes_into_out():
    w = torch.randn(24, 64)
    rows = torch.randn(3, 64)
    out = torch.full((1, 24), float("nan"))
    result = gemv(rows[1:2], w, out=out)
    assert result is out
    torch.testing.assert_close(out, F.linear(rows[1:2], w), atol=1e-4, rtol=1e-5)


def test_gemv_refuses_what_it_does_not_compute():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="one row"):
        gemv(torch.randn(2, 16), w)
    with pytest.raises(ValueError, match="features"):
        gemv(torch.randn(1, 8), w)
    with pytest.raises(ValueError, match="contiguous"):
        gemv(torch.randn(1, 16), torch.randn(16, 8).t())


def test_default_config_keeps_a_slice_of_4096_weights():
    assert default_config(4096, 14336) == GemvConfig(4, 1024)
    assert default_config(28672, 4096) == GemvConfig(2, 2048)
    assert default_config(6144, 4096) == GemvConfig(8, 512)  # measured
    assert default_config(100, 64) == GemvConfig(16, 64)


def test_linear_on_the_cpu_is_f_linear_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    for m in (1, 3):
        x = torch.randn(m, 32, generator=g).bfloat16()
        w = torch.randn(16, 32, generator=g).bfloat16()
        b = torch.randn(16, generator=g).bfloat16()
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))
        assert torch.equal(gemv_reference(x, w, b), F.linear(x, w, b))


def test_pdl_is_off_on_the_cpu():
    t = torch.zeros(1)
    assert not pdl_enabled(t)
    assert pdl_launch(t) == {"USE_PDL": False}
