"""`argmax_rows` (Triton, under the interpreter) against torch.argmax: ties, NaN, -inf rows,
rows shorter and longer than a chunk."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels import argmax_rows
from max_kernels.argmax import argmax_rows as triton_argmax_rows


@pytest.mark.parametrize("vocab", [7, 4096, 4097, 20000])
def test_matches_torch_argmax_with_ties_across_chunks(vocab):
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=g)
    logits[1, vocab // 3] = logits[1, -1] = 100.0  # a tie: the first wins
    logits[2] = float("-inf")  # all -inf: index 0
    logits[3, :] = 1.0  # all equal
    if vocab > 2:
        logits[4, 2] = float("nan")  # NaN wins, as on torch
        logits[4, 1] = float("inf")
    assert torch.equal(triton_argmax_rows(logits), torch.argmax(logits, dim=-1))


def test_reads_a_strided_batch_and_bfloat16():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 9000, generator=g)
    view = wide[:, :5000]
    assert torch.equal(triton_argmax_rows(view), torch.argmax(view, dim=-1))
    half = torch.randn(2, 300, generator=g).bfloat16()
    assert torch.equal(triton_argmax_rows(half), torch.argmax(half, dim=-1))


def test_dispatch_on_the_cpu_is_torch_argmax():
    logits = torch.randn(4, 50)
    assert torch.equal(argmax_rows(logits), torch.argmax(logits, dim=-1))
    assert triton_argmax_rows(torch.empty(0, 10)).shape == (0,)
