"""Latent attention's decode with absorbed weights against the expanded path (per-head keys
and values built from the latents), float32 on the CPU; and through the Triton kernels
(Triton's interpreter) against the torch references."""

import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max.nn.latent_attention import LatentAttention, latent_cache_width
from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.step_context import step_context
from max.testing.layer_caches import OneLayerCache
from max_kernels import RaggedLayout, backend

RANK, ROPE, NOPE, V_DIM, HEADS, PAGE = 32, 8, 16, 12, 4, 4
CONTEXTS = [9, 1, 14]  # tokens per request, the step's new one last


def _layer(seed: int) -> LatentAttention:
    torch.manual_seed(seed)
    rotary = RotaryEmbedding(ROPE, {"rope_type": "default", "rope_theta": 100.0}, 64, 64)
    layer = LatentAttention(
        0, 48, HEADS, q_lora_rank=None, kv_lora_rank=RANK, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
        v_head_dim=V_DIM, rotary=rotary, norm_eps=1e-6, scale=0.3,
    )  # fmt: skip
    with torch.no_grad():
        layer.kv_a_layernorm.weight.uniform_(0.5, 1.5)
    return layer.eval()


def _step(num_decode: int, query_lens=(1, 1, 1), host: bool = True, pad: int = 0):
    """A step of `query_lens` new tokens per request (the last of each request's CONTEXTS)
    over random earlier rows on shuffled pages; `pad` padding rows at the end (slot -1, past
    query_start[-1], as a CUDA-graph prefill has); host lengths unless `host` is False."""
    g = torch.Generator().manual_seed(1)
    width = latent_cache_width(RANK, ROPE)
    pages = sum(-(-n // PAGE) for n in CONTEXTS)
    k, v = torch.randn(pages, PAGE, 1, width, generator=g), torch.randn(pages, PAGE, 1, width, generator=g)
    order = torch.randperm(pages, generator=g).int()
    table = torch.zeros(len(CONTEXTS), 4, dtype=torch.int32)
    used, slots, positions = 0, [], []
    for b, n in enumerate(CONTEXTS):
        w = -(-n // PAGE)
        table[b, :w] = order[used : used + w]
        used += w
        for p in range(n - query_lens[b], n):
            slots.append(int(table[b, p // PAGE]) * PAGE + p % PAGE)
            positions.append(p)
    layout = RaggedLayout(
        query_start=torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32),
        context_lens=torch.tensor(CONTEXTS, dtype=torch.int32),
        page_table=table,
        slot_mapping=torch.tensor(slots + [-1] * pad),
        page_size=PAGE,
        num_decode=num_decode,
        query_lens=list(query_lens),
        context_lens_host=list(CONTEXTS) if host else None,
        num_splits=2,
    )
    return layout, OneLayerCache(k, v, scales=None), torch.tensor(positions + [0] * pad)


def _run(layer, num_decode: int, **step) -> torch.Tensor:
    layout, cache, positions = _step(num_decode, **step)
    x = torch.randn(positions.shape[0], 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), step_context(layout, cache):
        return layer(x, positions)


def test_absorbed_decode_equals_expanded_attention():
    """num_decode = 3: every row absorbed; 0: the same one-token rows as prefill rows."""
    layer = _layer(0)
    torch.testing.assert_close(_run(layer, 3), _run(layer, 0), rtol=1e-5, atol=1e-5)


def test_mixed_step_equals_expanded_attention():
    """The first request absorbed, the other two expanded, in one step."""
    layer = _layer(3)
    torch.testing.assert_close(_run(layer, 1), _run(layer, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "step", [{}, {"query_lens": (3, 1, 6), "host": False, "pad": 3}], ids=["decode", "graph_prefill"]
)
def test_triton_kernels_equal_torch_references(step):
    layer = _layer(5)
    num_decode = 3 if not step else 0
    with backend("triton"):
        got = _run(layer, num_decode, **step)
    torch.testing.assert_close(got[:10], _run(layer, num_decode, **step)[:10], rtol=1e-5, atol=1e-5)


def test_prefill_without_host_lengths_equals_expanded_attention():
    """A step as a CUDA-graph prefill runs it (no host lengths, padding rows at the end):
    every row absorbed, each over its request's tokens up to itself."""
    layer = _layer(7)
    lens = (3, 1, 6)
    expected = _run(layer, 0, query_lens=lens)
    got = _run(layer, 0, query_lens=lens, host=False, pad=3)
    torch.testing.assert_close(got[: sum(lens)], expected, rtol=1e-5, atol=1e-5)
