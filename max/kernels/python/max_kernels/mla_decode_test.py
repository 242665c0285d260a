"""The MLA decode kernel and the latent row store against their torch references, on small
shapes through Triton's interpreter (TRITON_INTERPRET=1)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from max_kernels.mla_decode import (
    mla_decode,
    mla_decode_reference,
    write_latent_rows,
    write_latent_rows_reference,
)

# The interpreter runs kernels on CPU tensors (the GPU test covers CUDA at full size).
DEVICE = "cpu"


def _paged_rows(contexts, half, page_size, dtype, seed=0):
    """Caches holding random rows for requests of `contexts` tokens on shuffled pages."""
    g = torch.Generator().manual_seed(seed)
    widths = [-(-n // page_size) for n in contexts]
    num_pages = sum(widths) + 2
    k_cache = torch.randn(num_pages, page_size, 1, half, generator=g).to(dtype)
    v_cache = torch.randn(num_pages, page_size, 1, half, generator=g).to(dtype)
    order = torch.randperm(num_pages, generator=g)
    table = torch.zeros(len(contexts), max(widths + [1]), dtype=torch.int32)
    used = 0
    for b, w in enumerate(widths):
        table[b, :w] = order[used : used + w].int()
        used += w
    to = dict(device=DEVICE)
    return k_cache.to(**to), v_cache.to(**to), table.to(**to), torch.tensor(contexts, dtype=torch.int32, **to)


@pytest.mark.parametrize(
    ("rank", "rope", "num_heads"),
    [(32, 8, 4), (48, 16, 16), (24, 7, 20)],
    ids=["rest_piece", "power_of_two_half", "odd_row_two_head_blocks"],
)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_matches_reference_float32(rank, rope, num_heads, num_splits):
    half = -(-(rank + rope) // 2)
    contexts = [37, 1, 0, 70]  # odd lengths over several pages; a padding row (0)
    k_cache, v_cache, table, ctx = _paged_rows(contexts, half, page_size=8, dtype=torch.float32)
    q = torch.randn(len(contexts), num_heads, rank + rope, device=DEVICE)
    expected = mla_decode_reference(q, k_cache, v_cache, table, ctx, 0.3, rank)
    got = mla_decode(q, k_cache, v_cache, table, ctx, 0.3, rank, num_splits=num_splits)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got[2].abs().max() == 0  # the padding row


def test_kernel_matches_reference_bfloat16():
    rank, rope = 32, 8
    k_cache, v_cache, table, ctx = _paged_rows([19, 45], 20, page_size=4, dtype=torch.bfloat16, seed=1)
    q = torch.randn(2, 16, rank + rope, device=DEVICE).bfloat16()
    expected = mla_decode_reference(q, k_cache, v_cache, table, ctx, 0.2, rank)
    got = mla_decode(q, k_cache, v_cache, table, ctx, 0.2, rank, num_splits=2)
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_reference_is_softmax_over_rows():
    """The reference's definition on one request by hand: scores against whole rows, the
    value being the latent columns only."""
    k_cache, v_cache, table, ctx = _paged_rows([5], 6, page_size=2, dtype=torch.float32, seed=2)
    q = torch.randn(1, 2, 11, device=DEVICE)
    rows = torch.cat((k_cache, v_cache), -1)[table[0, :3].long()].reshape(-1, 12)[:5]
    p = (q[0] @ rows[:, :11].T * 0.5).softmax(-1)
    torch.testing.assert_close(mla_decode_reference(q, k_cache, v_cache, table, ctx, 0.5, 8)[0], p @ rows[:, :8])


def test_write_rows_matches_reference_and_skips_padding():
    rows = torch.randn(5, 39, device=DEVICE)
    slots = torch.tensor([3, 17, -1, 0, 9], device=DEVICE)
    caches = [torch.zeros(5, 4, 1, 20, device=DEVICE) for _ in range(4)]
    write_latent_rows(rows, caches[0], caches[1], slots)
    write_latent_rows_reference(rows, caches[2], caches[3], slots)
    torch.testing.assert_close(caches[0], caches[2], rtol=0, atol=0)
    torch.testing.assert_close(caches[1], caches[3], rtol=0, atol=0)
    flat = torch.cat((caches[0], caches[1]), -1).view(20, 40)
    torch.testing.assert_close(flat[17], torch.cat((rows[1], rows.new_zeros(1))))
    assert flat.abs().sum(-1).nonzero().flatten().tolist() == [0, 3, 9, 17]  # row 2 not stored
