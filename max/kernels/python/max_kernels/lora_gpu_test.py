"""The batched LoRA kernels on a CUDA GPU at an 8B model's shapes: SGMV over rows grouped by
slot (decode rows, prefill chunks, batch 1 with the reduction split over K) against the
float32 reference, in bfloat16 and float32, with adapters mixed with base-model rows; and
the kernels replayed from a CUDA graph whose group buffers change between replays.
Skipped without a GPU.

    PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/kernels/python/max_kernels/lora_gpu_test.py
"""

import numpy as np
import pytest
import torch

from max_kernels import LoRAGroups, LoRAStack, backend, lora_add
from max_kernels.lora_sgmv import group_rows, max_group_tiles

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HIDDEN, RANK, SLOTS = 4096, 16, 8
QKV = [(0, 4096), (4096, 1024), (5120, 1024)]


def _weights(k, slices, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = slices[-1][0] + slices[-1][1]
    a = (torch.randn(SLOTS, len(slices) * RANK, k, device="cuda", generator=g) * k**-0.5).to(dtype)
    b = (torch.randn(SLOTS, n, RANK, device="cuda", generator=g) * RANK**-0.5).to(dtype)
    scales = torch.linspace(0.5, 2.0, SLOTS, device="cuda")
    return a, b, scales, n


def _groups(token_slots):
    rows, tiles = group_rows(np.asarray(token_slots, dtype=np.int32))
    return LoRAGroups(torch.from_numpy(rows).cuda(), torch.from_numpy(tiles).cuda())


@pytest.mark.parametrize(("k", "slices"), [(HIDDEN, QKV), (HIDDEN, [(0, 14336), (14336, 14336)]), (14336, [(0, HIDDEN)])])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", ["batch1", "decode", "mixed"])
def test_kernels_match_the_reference(k, slices, dtype, rows):
    a, b, scales, n = _weights(k, slices, dtype)
    lengths = {"batch1": [1], "decode": [1] * 64, "mixed": [1] * 40 + [300, 7, 129]}[rows]
    slots = [(i * 3) % (SLOTS + 1) - 1 for i in range(len(lengths))]  # every slot and -1
    slots[0] = 2
    token_slots = torch.repeat_interleave(torch.tensor(slots, dtype=torch.int32), torch.tensor(lengths)).cuda()
    t = sum(lengths)
    x = torch.randn(t, k, device="cuda").to(dtype)
    y = torch.randn(t, n, device="cuda").to(dtype)
    with backend("torch"):
        want = lora_add(y.float().clone(), x.float(), LoRAStack(a.float(), b.float(), scales, slices), token_slots, None)
    got = lora_add(y.clone(), x, LoRAStack(a, b, scales, slices), token_slots, _groups(token_slots.cpu()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    base_rows = token_slots < 0
    assert torch.equal(got[base_rows], y[base_rows])


def test_kernels_in_a_cuda_graph_read_the_groups_at_replay():
    a, b, scales, n = _weights(HIDDEN, QKV, torch.bfloat16)
    x = torch.randn(32, HIDDEN, device="cuda").bfloat16()
    y0 = torch.randn(32, n, device="cuda").bfloat16()
    rows = torch.zeros(32, dtype=torch.int32, device="cuda")
    tiles = torch.zeros(3, max_group_tiles(32, SLOTS), dtype=torch.int32, device="cuda")
    tiles[2] = -1
    groups = LoRAGroups(rows, tiles)
    slots = torch.full((32,), -1, dtype=torch.int32, device="cuda")
    y = y0.clone()
    lora_add(y, x, LoRAStack(a, b, scales, QKV), slots, groups)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y.copy_(y0)
        lora_add(y, x, LoRAStack(a, b, scales, QKV), slots, groups)
    for pattern in ([-1] * 32, [i % SLOTS for i in range(32)], [3] * 16 + [-1] * 16, [5] + [-1] * 31):
        step = _groups(pattern)
        rows[: step.rows.shape[0]].copy_(step.rows)
        tiles[:, : step.num_tiles].copy_(step.tiles)
        tiles[2, step.num_tiles :] = -1
        graph.replay()
        want = lora_add(y0.clone(), x, LoRAStack(a, b, scales, QKV), slots, step)
        torch.testing.assert_close(y, want)


@pytest.mark.parametrize(("k", "slices"), [(HIDDEN, QKV), (HIDDEN, [(0, 14336), (14336, 14336)]), (14336, [(0, HIDDEN)])])
@pytest.mark.parametrize("slot", [3, -1])
def test_one_row_gemv_adds_the_lora_product(k, slices, slot):
    # Batch-1 decode: `lora_linear` runs the shrink, then the GEMV with the expand in its
    # epilogue; the result is the plain GEMV followed by `lora_add` (to the float32 order
    # of the sums), eagerly and replayed from a CUDA graph.
    from max_kernels import linear, lora_linear

    a, b, scales, n = _weights(k, slices, torch.bfloat16, seed=1)
    x = torch.randn(1, k, device="cuda").bfloat16()
    w = (torch.randn(n, k, device="cuda") * k**-0.5).bfloat16()
    slots = torch.tensor([slot], dtype=torch.int32, device="cuda")
    groups = _groups(slots.cpu())
    if slot < 0:
        groups = LoRAGroups(groups.rows, torch.tensor([[0], [0], [-1]], dtype=torch.int32, device="cuda"))
    want = lora_add(linear(x, w), x, LoRAStack(a, b, scales, slices), slots, groups)
    got = lora_linear(x, w, None, LoRAStack(a, b, scales, slices), slots, groups)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    if slot < 0:
        assert torch.equal(got, linear(x, w))
    out = torch.empty_like(got)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(lora_linear(x, w, None, LoRAStack(a, b, scales, slices), slots, groups))
    graph.replay()
    assert torch.equal(out, got)
