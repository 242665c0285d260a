"""The CPU's one-row bfloat16 product: which calls take it, that it is `F.linear` through
ATen (bit for bit, whatever the CPU), close to float32, and that oneDNN's flag comes back."""

import pytest
import torch
import torch.nn.functional as F

from max_kernels import linear
from max_kernels.cpu_gemv import cpu_gemv, takes_cpu_gemv


def _aten_linear(x, w, b=None):
    with torch.backends.mkldnn.flags(enabled=False):
        return F.linear(x, w, b)


@pytest.mark.parametrize("shape", [(1, 576), (1, 1, 576)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_one_bfloat16_row_is_atens_product(shape, with_bias):
    torch.manual_seed(0)
    w = torch.randn(1536, 576).to(torch.bfloat16)
    b = torch.randn(1536).to(torch.bfloat16) if with_bias else None
    x = torch.randn(*shape).to(torch.bfloat16)
    assert takes_cpu_gemv(x, w)
    y = linear(x, w, b)
    assert y.shape == (*shape[:-1], 1536)
    assert torch.equal(y, _aten_linear(x, w, b))
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert (y.double() - exact).norm() / exact.norm() < 1e-2
    assert torch.backends.mkldnn.enabled


def test_other_products_keep_f_linear():
    w = torch.randn(64, 32)
    assert not takes_cpu_gemv(torch.randn(1, 32), w)  # float32: the verification reference
    wb = w.to(torch.bfloat16)
    assert not takes_cpu_gemv(torch.randn(2, 32).to(torch.bfloat16), wb)  # several rows
    assert not takes_cpu_gemv(torch.randn(1, 32).half(), w.half())
    x = torch.randn(5, 32).to(torch.bfloat16)
    assert torch.equal(linear(x, wb), F.linear(x, wb))


def test_flag_is_restored_when_the_product_fails():
    with pytest.raises(RuntimeError):
        cpu_gemv(torch.randn(1, 31).to(torch.bfloat16), torch.randn(8, 32).to(torch.bfloat16))
    assert torch.backends.mkldnn.enabled
    with torch.backends.mkldnn.flags(enabled=False):
        cpu_gemv(torch.randn(1, 32).to(torch.bfloat16), torch.randn(8, 32).to(torch.bfloat16))
        assert not torch.backends.mkldnn.enabled  # a caller's own setting is kept
