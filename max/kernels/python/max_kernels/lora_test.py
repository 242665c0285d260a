"""The batched LoRA kernels (BGMV per row, SGMV per segment) against their torch reference
on the CPU, under Triton's interpreter; and the reference against the plain per-token
formula, for a batch that mixes adapters, ranks below the slots' rank, and base-model rows."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from max_kernels import LoRASegments, backend, lora_add
from max_kernels.lora_reference import lora_expand_reference, lora_shrink_reference
from max_kernels.lora_sgmv import segment_tiles

SLICES = [(0, 24), (24, 8), (32, 8)]  # a fused qkv-like output: q 24, k 8, v 8
RANK, SLOTS, K = 8, 3, 40


def _weights(seed: int, dtype=torch.float32, slices=SLICES):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(SLOTS, len(slices) * RANK, K, generator=g)
    b = torch.randn(SLOTS, 40, RANK, generator=g)
    a[1, :, :][RANK - 3 : RANK] = 0  # slot 1 has rank 5 in its first slice: zero padding
    b[1, :, RANK - 3 :] = 0
    scales = torch.tensor([0.5, 2.0, 0.25])
    return a.to(dtype), b.to(dtype), scales


def _per_token(x, y, a, b, scales, slots):
    """The formula, one token at a time, in float64."""
    out = y.double().clone()
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        for j, (o, n) in enumerate(SLICES):
            v = x[t].double() @ a[s, j * RANK : (j + 1) * RANK].double().T
            out[t, o : o + n] += float(scales[s]) * (v @ b[s, o : o + n].double().T)
    return out


def test_reference_matches_the_per_token_formula():
    a, b, scales = _weights(0)
    slots = torch.tensor([2, -1, 0, 0, 1, -1, 2], dtype=torch.int32)
    x = torch.randn(7, K)
    y = torch.randn(7, 40)
    v = lora_shrink_reference(x, a, slots)
    got = lora_expand_reference(y.clone(), v, b, scales.tolist(), slots, SLICES)
    torch.testing.assert_close(got.double(), _per_token(x, y, a, b, scales, slots), atol=1e-4, rtol=1e-5)
    # Base-model rows are untouched, bit for bit.
    assert torch.equal(got[1], y[1]) and torch.equal(got[5], y[5])


def _segments(lengths, slots):
    start = np.concatenate([[0], np.cumsum(lengths)])
    return LoRASegments(torch.from_numpy(segment_tiles(start, np.array(slots, dtype=np.int32))))


def test_tiles_cover_the_adapter_rows_only():
    tiles = segment_tiles(np.array([0, 1, 2, 21, 24]), np.array([2, -1, 1, 0], dtype=np.int32))
    assert tiles.tolist() == [[0, 2, 18, 21], [1, 18, 21, 24], [2, 1, 1, 0]]
    assert segment_tiles(np.array([0, 5]), np.array([-1], dtype=np.int32)).shape == (3, 0)


@pytest.mark.parametrize(
    ("lengths", "seg_slots"),
    [
        ([1, 1, 1, 1], [0, -1, 2, 1]),  # decode rows
        ([1, 1, 19, 3], [2, -1, 1, 0]),  # decode rows then prefill chunks across tiles
        ([17], [-1]),  # only the base model
    ],
)
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("slices", [SLICES, [(0, 24), (24, 16)], [(0, 40)]])
def test_kernels_match_the_reference(lengths, seg_slots, segmented, slices):
    a, b, scales = _weights(1, slices=slices)
    segments = _segments(lengths, seg_slots)
    slots = torch.repeat_interleave(torch.tensor(seg_slots, dtype=torch.int32), torch.tensor(lengths))
    t = sum(lengths)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(t, K, generator=g)
    y = torch.randn(t, 40, generator=g)
    want = lora_add(y.clone(), x, a, b, scales, slots, None, slices)  # the CPU reference
    with backend("triton"):
        got = lora_add(y.clone(), x, a, b, scales, slots, segments if segmented else None, slices)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_bgmv_in_bfloat16_is_close_to_the_float32_result():
    a, b, scales = _weights(2)
    slots = torch.tensor([0, 1, -1, 2], dtype=torch.int32)
    x, y = torch.randn(4, K), torch.randn(4, 40)
    want = lora_add(y.clone(), x, a, b, scales, slots, None, SLICES)
    with backend("triton"):
        got = lora_add(y.bfloat16(), x.bfloat16(), a.bfloat16(), b.bfloat16(), scales, slots, None, SLICES)
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).abs() <= want.abs() * 0.05 + 0.5).all()
