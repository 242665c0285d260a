"""The one-row product and programmatic dependent launch on a CUDA GPU.

`gemv` at the 8B model's shapes against the float32 product; and a decoder-like chain of
PDL kernels (RMSNorm, GEMV, SwiGLU, GEMV) replayed from a CUDA graph against the same chain
launched without PDL: the early launches must not let a kernel read its input before the
kernel that writes it has finished.
"""

import pytest
import torch
import torch.nn.functional as F

from max_kernels import configure, linear
from max_kernels.activation import silu_and_mul
from max_kernels.cuda_graph import capture_graph
from max_kernels.gemv import gemv
from max_kernels.normalization import rms_norm
from max_kernels.pdl import pdl_enabled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 4096), (4096, 14336), (151936, 896), (1000, 72)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_the_float32_product(n, k, dtype, bias):
    g = torch.Generator(device="cuda").manual_seed(n + k)
    x = torch.randn(1, k, device="cuda", generator=g).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=g) * k**-0.5).to(dtype)
    b = torch.randn(n, device="cuda", generator=g).to(dtype) if bias else None
    want = F.linear(x.float(), w.float(), None if b is None else b.float())
    got = gemv(x, w, b)
    assert got.dtype == dtype and got.shape == (1, n)
    # One unit of the 16-bit type, relative, plus the float32 sums' order.
    unit = 2**-8 if dtype == torch.bfloat16 else 2**-11
    assert ((got.float() - want).abs() <= want.abs() * unit + 1e-3).all()


def test_linear_sends_one_row_to_the_gemv_and_more_to_cublas():
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(linear(x, w), F.linear(x, w))
    torch.testing.assert_close(linear(x[:1], w), gemv(x[:1], w), atol=0, rtol=0)


def test_pdl_is_on_for_hopper():
    t = torch.zeros(1, device="cuda")
    assert pdl_enabled(t) == (torch.cuda.get_device_capability() >= (9, 0))


def _chain(h, res, norm_w, w_up, w_down):
    """RMSNorm(h + res) -> gate_up -> SwiGLU -> down, with residual: a decoder MLP block."""
    x, summed = rms_norm(h, norm_w, 1e-6, residual=res)
    return gemv(silu_and_mul(gemv(x, w_up)), w_down), summed


def test_a_graph_of_pdl_kernels_matches_the_same_chain_without_pdl():
    g = torch.Generator(device="cuda").manual_seed(0)
    dim, inter, layers = 2048, 5632, 6
    params = [
        (
            torch.rand(dim, device="cuda", generator=g).bfloat16() + 0.5,
            (torch.randn(2 * inter, dim, device="cuda", generator=g) * dim**-0.5).bfloat16(),
            (torch.randn(dim, inter, device="cuda", generator=g) * inter**-0.5).bfloat16(),
        )
        for _ in range(layers)
    ]
    h_in = torch.zeros(1, dim, device="cuda", dtype=torch.bfloat16)
    res_in = torch.zeros_like(h_in)

    def forward():
        h, res = h_in, res_in
        for p in params:
            h, res = _chain(h, res, *p)
        return h + res

    def eager(h0, r0):
        configure(pdl=False)
        try:
            h_in.copy_(h0)
            res_in.copy_(r0)
            return forward().clone()
        finally:
            configure(pdl=True)

    graph, out = capture_graph(forward)
    for seed in range(3):
        gs = torch.Generator(device="cuda").manual_seed(100 + seed)
        h0 = torch.randn(1, dim, device="cuda", generator=gs).bfloat16()
        r0 = torch.randn(1, dim, device="cuda", generator=gs).bfloat16()
        want = eager(h0, r0)
        h_in.copy_(h0)
        res_in.copy_(r0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want), f"seed {seed}: graph with PDL differs from the eager chain"
