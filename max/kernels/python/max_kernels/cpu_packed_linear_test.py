"""The packed float32 CPU product (`cpu_packed_linear`): F.linear's result to float32
rounding, the same bits for a row whatever rows share its step (what keeps speculative
decoding's output identical to plain decoding, and a request's tokens the same in any
batch), a repack after the weight changes in place, and the dispatch of
`max_kernels.linear`."""

import pytest
import torch
import torch.nn.functional as F

from max_kernels import linear
from max_kernels.cpu_packed_linear import (
    BLOCK_ROWS,
    packed_linear,
    packed_linear_available,
    takes_packed_linear,
)

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="this torch has no oneDNN packed linear")


@pytest.mark.parametrize(("n", "k"), [(96, 64), (37, 1536), (1000, 200)])
@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_matches_f_linear(n, k, bias):
    g = torch.Generator().manual_seed(n + k)
    w, b = torch.randn(n, k, generator=g), (torch.randn(n, generator=g) if bias else None)
    for rows in (1, 3, BLOCK_ROWS, 13, 64):
        x = torch.randn(rows, k, generator=g)
        torch.testing.assert_close(packed_linear(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    x = torch.randn(1, 2, k, generator=g)  # [batch, rows, features]
    assert packed_linear(x, w, b).shape == (1, 2, n)


@torch.no_grad()
def test_a_row_gets_the_same_bits_with_any_other_rows():
    # The down projection's shape: oneDNN unpadded gives one row and five rows different bits;
    # past one block, the rows of a prefill chunk beside decode rows.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(576, 1536, generator=g)
    row = torch.randn(1536, generator=g)
    alone = packed_linear(row[None], w)[0]
    for rows in [*range(2, BLOCK_ROWS + 1), 9, 16, 37, 200]:
        for position in (0, rows - 1):
            x = torch.randn(rows, 1536, generator=g)
            x[position] = row
            assert torch.equal(packed_linear(x, w)[position], alone), (rows, position)


@torch.no_grad()
def test_the_packed_copy_follows_the_weight():
    w = torch.randn(40, 64)
    x = torch.randn(2, 64)
    packed_linear(x, w)
    w.copy_(torch.randn(40, 64))  # an in-place load after the first use
    torch.testing.assert_close(packed_linear(x, w), F.linear(x, w), atol=1e-4, rtol=1e-5)


def test_which_products_take_it():
    w = torch.randn(40, 64)
    with torch.no_grad():
        assert takes_packed_linear(torch.randn(BLOCK_ROWS, 64), w)
        assert takes_packed_linear(torch.randn(300, 64), w)  # a prefill chunk too
        assert not takes_packed_linear(torch.randn(0, 64), w)
        assert not takes_packed_linear(torch.randn(1, 64).bfloat16(), w.bfloat16())
        x = torch.randn(3, 64)
        torch.testing.assert_close(linear(x, w), F.linear(x, w), atol=1e-4, rtol=1e-5)
    assert not takes_packed_linear(torch.randn(1, 64), w)  # autograd on: torch's own product
