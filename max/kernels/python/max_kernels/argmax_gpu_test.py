"""`argmax_rows` on a CUDA GPU against torch.argmax, at vocabulary sizes of real models,
eagerly and replayed from a CUDA graph."""

import pytest
import torch

from max_kernels.argmax import argmax_rows
from max_kernels.cuda_graph import capture_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("vocab", [49152, 128256, 151936, 262144])
@pytest.mark.parametrize("rows", [1, 3, 256])
def test_matches_torch_argmax(vocab, rows):
    g = torch.Generator(device="cuda").manual_seed(vocab + rows)
    logits = torch.randn(rows, vocab, device="cuda", generator=g)
    logits[0, vocab - 1] = logits[0, 5] = 50.0  # a tie across chunks: the first wins
    if rows > 2:
        logits[1] = float("-inf")
        logits[2, 7] = float("nan")
    assert torch.equal(argmax_rows(logits), torch.argmax(logits, dim=-1))


def test_in_a_cuda_graph():
    logits = torch.randn(2, 128256, device="cuda")
    graph, out = capture_graph(lambda: argmax_rows(logits))
    for seed in range(3):
        logits.copy_(torch.randn(logits.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
        graph.replay()
        assert torch.equal(out, torch.argmax(logits, dim=-1))
