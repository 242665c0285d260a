"""Attention's per-head q/k norms (Qwen3's RMSNorm, Gemma 3's): run as one `rms_norm_qk`
over the projection's heads, they give what the two norm modules give (bit for bit through
the torch references; through the Triton kernels in Triton's interpreter within float32
rounding), and norms the fused op does not know run as modules."""

import pytest
import torch

from max.nn.attention import Attention
from max.nn.norm import GemmaRMSNorm, RMSNorm
from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.step_context import step_context
from max.testing.layer_caches import OneLayerCache
from max_kernels import RaggedLayout, backend
from max_kernels.backend import interpreting

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, PAGE = 64, 4, 2, 16, 4
CONTEXTS = [5, 1, 7]  # tokens per request, this step's one last


class _ShiftedNorm(RMSNorm):
    """An RMSNorm subclass whose forward adds one: the fused op must not stand in for it."""

    def forward(self, x, residual=None):
        return super().forward(x) + 1.0


def _attention(norm_class, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    rotary = RotaryEmbedding(HEAD_DIM, {"rope_type": "default", "rope_theta": 100.0}, 64, 64)
    layer = Attention(0, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, rotary, qk_norm=lambda d: norm_class(d, 1e-6))
    with torch.no_grad():
        layer.qkv_proj.weight.normal_(0, 0.2)
        layer.o_proj.weight.normal_(0, 0.2)
        layer.q_norm.weight.uniform_(0.5, 1.5)
        layer.k_norm.weight.uniform_(-0.5, 0.5)
    return layer.eval()


def _decode_step():
    g = torch.Generator().manual_seed(1)
    pages = sum(-(-n // PAGE) for n in CONTEXTS)
    k = torch.randn(pages, PAGE, KV_HEADS, HEAD_DIM, generator=g)
    v = torch.randn(pages, PAGE, KV_HEADS, HEAD_DIM, generator=g)
    table = torch.zeros(len(CONTEXTS), 2, dtype=torch.int32)
    used, slots = 0, []
    for b, n in enumerate(CONTEXTS):
        w = -(-n // PAGE)
        table[b, :w] = torch.arange(used, used + w, dtype=torch.int32)
        used += w
        slots.append(int(table[b, (n - 1) // PAGE]) * PAGE + (n - 1) % PAGE)
    layout = RaggedLayout(
        query_start=torch.arange(len(CONTEXTS) + 1, dtype=torch.int32), context_lens=torch.tensor(CONTEXTS, dtype=torch.int32),
        page_table=table, slot_mapping=torch.tensor(slots), page_size=PAGE, num_decode=len(CONTEXTS),
        query_lens=[1] * len(CONTEXTS), context_lens_host=list(CONTEXTS),
    )  # fmt: skip
    return layout, OneLayerCache(k, v), torch.tensor([n - 1 for n in CONTEXTS])


def _run(layer: Attention) -> torch.Tensor:
    layout, cache, positions = _decode_step()
    x = torch.randn(len(CONTEXTS), HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), step_context(layout, cache):
        return layer(x, positions)


def _unfused(layer: Attention, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(Attention, "_norm_heads", lambda self, qkv, q, k: (self.q_norm(q), self.k_norm(k)))
    try:
        return _run(layer)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("norm_class", [RMSNorm, GemmaRMSNorm])
def test_fused_qk_norms_equal_the_norm_modules(norm_class, monkeypatch):
    layer = _attention(norm_class)
    assert torch.equal(_run(layer), _unfused(layer, monkeypatch))


@pytest.mark.skipif(not interpreting(), reason="CPU tensors through Triton need its interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("norm_class", [RMSNorm, GemmaRMSNorm])
def test_fused_qk_norms_through_the_triton_kernels(norm_class, monkeypatch):
    layer = _attention(norm_class, seed=3)
    with backend("triton"):
        got = _run(layer)
    torch.testing.assert_close(got, _unfused(layer, monkeypatch), rtol=1e-5, atol=1e-5)


def test_a_norm_subclass_runs_as_its_module(monkeypatch):
    layer = _attention(_ShiftedNorm, seed=4)
    assert torch.equal(_run(layer), _unfused(layer, monkeypatch))
    plain = _attention(RMSNorm, seed=4)
    assert not torch.allclose(_run(layer), _run(plain))
