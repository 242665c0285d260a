"""RMSNorm with the residual add folded in equals the add followed by the norm."""

import pytest
import torch

from max.nn import GemmaRMSNorm, RMSNorm


@pytest.mark.parametrize("cls", [RMSNorm, GemmaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_form_equals_add_then_norm(cls, dtype):
    g = torch.Generator().manual_seed(0)
    norm = cls(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(0, 0.3, generator=g)
    x = torch.randn(5, 24, generator=g).to(dtype)
    residual = torch.randn(5, 24, generator=g).to(dtype)
    out, new_residual = norm(x, residual)
    assert torch.equal(new_residual, x + residual)
    assert torch.equal(out, norm(x + residual))


def test_llama_and_gemma_weights_scale_differently():
    x = torch.randn(2, 8)
    llama, gemma = RMSNorm(8), GemmaRMSNorm(8)
    # Both start as the identity scale: ones for Llama, zeros (1 + 0) for Gemma.
    torch.testing.assert_close(llama(x), gemma(x))
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
    torch.testing.assert_close(llama(x), x * rms)
