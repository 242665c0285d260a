"""The MLA decode kernel on CUDA at DeepSeek-V2-Lite's shape (16 heads, kv_lora_rank 512,
qk_rope_head_dim 64: rows of 576 values in two halves of 288), against its float32
reference, eagerly and replayed in a CUDA graph; prints the rate at which it reads the
cache (the kernel's cost at decode is that read).

    PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q -s \\
        max/kernels/python/max_kernels/mla_decode_gpu_test.py
"""

import pytest
import torch

from max_kernels.cuda_graph import capture_graph
from max_kernels.mla_decode import (
    mla_decode,
    mla_decode_reference,
    write_latent_rows,
    write_latent_rows_reference,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HEADS, RANK, ROPE, HALF = 16, 512, 64, 288
# 16-bit kernels round the probabilities to the input dtype before the value product.
TOLERANCES = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _inputs(contexts, page_size, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    widths = [-(-n // page_size) for n in contexts]
    num_pages = sum(widths) + 1
    k = torch.randn(num_pages, page_size, 1, HALF, device="cuda", generator=g).to(dtype)
    v = torch.randn(num_pages, page_size, 1, HALF, device="cuda", generator=g).to(dtype)
    order = torch.randperm(num_pages, device="cuda", generator=g).int()
    table = torch.zeros(len(contexts), max(widths), dtype=torch.int32, device="cuda")
    used = 0
    for b, w in enumerate(widths):
        table[b, :w] = order[used : used + w]
        used += w
    q = torch.randn(len(contexts), HEADS, RANK + ROPE, device="cuda", generator=g).to(dtype)
    return q, k, v, table, torch.tensor(contexts, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize(("contexts", "num_splits"), [([1], 1), ([4097], 16), ([33, 0, 700, 129], 4), ([300] * 32, 1)])
def test_kernel_matches_reference(dtype, page_size, contexts, num_splits):
    q, k, v, table, ctx = _inputs(contexts, page_size, dtype)
    scale = (128 + 64) ** -0.5
    expected = mla_decode_reference(q, k, v, table, ctx, scale, RANK).float()
    got = mla_decode(q, k, v, table, ctx, scale, RANK, num_splits=num_splits)
    torch.testing.assert_close(got.float(), expected, **TOLERANCES[dtype])


def test_graph_replay_follows_new_lengths():
    q, k, v, table, ctx = _inputs([2000, 2000], 64, torch.bfloat16)
    graph, out = capture_graph(lambda: mla_decode(q, k, v, table, ctx, 0.1, RANK, num_splits=8))
    ctx.copy_(torch.tensor([5, 1999], dtype=torch.int32))
    graph.replay()
    expected = mla_decode_reference(q, k, v, table, ctx, 0.1, RANK).float()
    torch.testing.assert_close(out.float(), expected, **TOLERANCES[torch.bfloat16])


def test_write_rows_matches_reference():
    rows = torch.randn(64, RANK + ROPE, device="cuda").bfloat16()
    slots = torch.randperm(256, device="cuda")[:64]
    slots[5] = -1
    caches = [torch.zeros(16, 16, 1, HALF, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    write_latent_rows(rows, caches[0], caches[1], slots)
    write_latent_rows_reference(rows, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize(("batch", "context", "num_splits"), [(1, 4096, 16), (1, 384, 16), (32, 2048, 1), (64, 1024, 1)])
def test_cache_read_rate(batch, context, num_splits):
    """Replays stay right at serving shapes; prints GB/s over the rows each step reads
    (bfloat16, one CUDA-graph replay per step)."""
    q, k, v, table, ctx = _inputs([context] * batch, 64, torch.bfloat16)
    graph, out = capture_graph(lambda: mla_decode(q, k, v, table, ctx, 0.1, RANK, num_splits=num_splits))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        graph.replay()
    start.record()
    for _ in range(50):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) / 50 * 1e3
    read = batch * context * 2 * HALF * 2
    print(f"\nMLA decode B={batch} ctx={context} splits={num_splits}: {us:.1f} us, {read / us / 1e3:.0f} GB/s")
    expected = mla_decode_reference(q, k, v, table, ctx, 0.1, RANK).float()
    torch.testing.assert_close(out.float(), expected, **TOLERANCES[torch.bfloat16])
