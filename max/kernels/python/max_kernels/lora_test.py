"""The batched LoRA kernels (SGMV over the rows grouped by slot, split over K) against
their torch reference on the CPU, under Triton's interpreter; and the reference against
the plain per-token formula, for a batch that mixes adapters, ranks below the slots' rank,
and base-model rows."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from max_kernels import LoRAGroups, LoRAStack, backend, lora_add
from max_kernels.lora_reference import lora_expand_reference, lora_shrink_reference
from max_kernels.lora_sgmv import BLOCK_M, PREFILL_BLOCK_M, group_rows, max_group_tiles, tile_rows

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


def test_bfloat16_reference_rounds_where_peft_does():
    """In bfloat16 the CPU reference multiplies in float32 and rounds each product once: what
    bfloat16 F.linear gives (PEFT's lora_A, then lora_B), up to the order of the float32 sums."""
    a, b, scales = _weights(1, torch.bfloat16)
    slots = torch.tensor([0, -1, 2, 2], dtype=torch.int32)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, K, generator=g).bfloat16()
    y = torch.randn(4, 40, generator=g).bfloat16()
    v = lora_shrink_reference(x, a, slots)
    got = lora_expand_reference(y.clone(), v, b, scales.tolist(), slots, SLICES)
    assert v.dtype == got.dtype == torch.bfloat16
    want = y.clone()
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        for j, (o, n) in enumerate(SLICES):
            vj = torch.nn.functional.linear(x[t : t + 1], a[s, j * RANK : (j + 1) * RANK])  # lora_A, bfloat16
            want[t : t + 1, o : o + n] += torch.nn.functional.linear(vj, b[s, o : o + n]) * float(scales[s])
    torch.testing.assert_close(got, want, atol=0.05, rtol=1.6e-2)
    assert torch.equal(got[1], y[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_token_by_token_equals_adapter_by_adapter(monkeypatch, dtype):
    """A step whose adapters have few rows each is multiplied token by token over gathered
    weights; it gives what the loop over adapters gives (float32 up to the order of sums)."""
    import max_kernels.lora_reference as reference

    a, b, scales = _weights(3, dtype)
    slots = torch.tensor([2, -1, 0, 1, 1, -1, 2, 0], dtype=torch.int32)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, K, generator=g).to(dtype)
    y = torch.randn(8, 40, generator=g).to(dtype)

    def run():
        v = lora_shrink_reference(x, a, slots)
        return v, lora_expand_reference(y.clone(), v, b, scales.tolist(), slots, SLICES)

    assert reference._adapter_rows(slots) is None  # 3 adapters over 8 rows: gathered
    v_gathered, got = run()
    monkeypatch.setattr(reference, "_GATHER_ROWS_PER_ADAPTER", 0)
    v_looped, want = run()
    tol = {"atol": 1e-5, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 0.05, "rtol": 1.6e-2}
    torch.testing.assert_close(v_gathered, v_looped, **tol)
    torch.testing.assert_close(got, want, **tol)
    assert torch.equal(got[1], y[1]) and torch.equal(got[5], y[5])  # base rows untouched


def _groups(token_slots, block_m=BLOCK_M):
    rows, tiles = group_rows(np.asarray(token_slots, dtype=np.int32), block_m)
    return LoRAGroups(torch.from_numpy(rows), torch.from_numpy(tiles), block_m)


def test_rows_are_grouped_by_slot_in_tiles_of_one_slot():
    # Decode rows of slots 2, 1, 0 and two prompt chunks (slots 1 and 0), base rows between.
    slots = [2, -1, 1, 0] + [1] * 19 + [-1] * 2 + [0] * 3
    rows, tiles = group_rows(np.array(slots, dtype=np.int32))
    assert sorted(rows.tolist()) == [t for t, s in enumerate(slots) if s >= 0]
    covered = []
    for first, end, slot in tiles.T.tolist():
        assert 0 < end - first <= BLOCK_M
        assert {slots[r] for r in rows[first:end]} == {slot}
        covered += rows[first:end].tolist()
    assert sorted(covered) == sorted(rows.tolist())
    # Slot 0: 4 rows in one tile; slot 1: 20 rows in two; slot 2: one row.
    assert sorted(tiles[2].tolist()) == [0, 1, 1, 2]
    # A prompt's rows stay in order (stable), and the bound holds.
    assert rows[tiles[0][tiles[2] == 1][0] : tiles[1][tiles[2] == 1][0]].tolist() == [2, *range(4, 19)]
    assert tiles.shape[1] <= max_group_tiles(len(slots), 3)
    assert group_rows(np.array([-1] * 5, dtype=np.int32))[1].shape == (3, 0)


def test_steps_whose_adapters_have_many_rows_take_taller_tiles():
    decode = np.arange(256, dtype=np.int32) % 8  # 32 rows an adapter
    prefill = np.repeat(np.arange(8, dtype=np.int32), 300)  # prompt chunks
    assert tile_rows(decode) == BLOCK_M and tile_rows(prefill) == PREFILL_BLOCK_M
    assert tile_rows(np.full(4096, -1, dtype=np.int32)) == BLOCK_M  # no adapter rows
    rows, tiles = group_rows(prefill, PREFILL_BLOCK_M)
    assert (tiles[1] - tiles[0]).max() == PREFILL_BLOCK_M
    assert tiles.shape[1] == 8 * 5 <= max_group_tiles(len(prefill), 8, PREFILL_BLOCK_M)  # 300 rows: 5 tiles


@pytest.mark.parametrize(
    ("lengths", "seg_slots"),
    [
        ([1, 1, 1, 1], [0, -1, 2, 1]),  # decode rows
        ([1, 1, 19, 3], [2, -1, 1, 0]),  # decode rows then prefill chunks across tiles
        ([1] * 20, [0, 1, 2, -1] * 5),  # decode rows of the same slots gathered into tiles
        ([17], [-1]),  # only the base model
    ],
)
@pytest.mark.parametrize("slices", [SLICES, [(0, 24), (24, 16)], [(0, 40)]])
@pytest.mark.parametrize("block_m", [BLOCK_M, PREFILL_BLOCK_M])
def test_kernels_match_the_reference(lengths, seg_slots, slices, block_m):
    a, b, scales = _weights(1, slices=slices)
    slots = torch.repeat_interleave(torch.tensor(seg_slots, dtype=torch.int32), torch.tensor(lengths))
    t = sum(lengths)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(t, K, generator=g)
    y = torch.randn(t, 40, generator=g)
    want = lora_add(y.clone(), x, LoRAStack(a, b, scales, slices), slots, None)  # the CPU reference
    with backend("triton"):
        got = lora_add(y.clone(), x, LoRAStack(a, b, scales, slices), slots, _groups(slots, block_m))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    base_rows = slots < 0
    assert torch.equal(got[base_rows], y[base_rows])


def test_the_reduction_is_split_over_k_and_summed_back():
    # K of 600 runs in several splits of 128 (the interpreter counts 4 SMs).
    a, b, scales = _weights(3)
    k = 600
    a = torch.randn(SLOTS, a.shape[1], k)
    slots = torch.tensor([1, 0, -1], dtype=torch.int32)
    x, y = torch.randn(3, k), torch.randn(3, 40)
    want = lora_add(y.clone(), x, LoRAStack(a, b, scales, SLICES), slots, None)
    with backend("triton"):
        from max_kernels.lora_sgmv import lora_shrink_sgmv

        assert lora_shrink_sgmv(x, a, _groups(slots), RANK).shape[0] > 1
        got = lora_add(y.clone(), x, LoRAStack(a, b, scales, SLICES), slots, _groups(slots))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_kernels_in_half_precision_are_close_to_the_float32_result():
    # float16: Triton's interpreter multiplies bfloat16 tiles wrongly in tl.dot (3.9); the
    # GPU test checks bfloat16.
    a, b, scales = _weights(2)
    slots = torch.tensor([0, 1, -1, 2], dtype=torch.int32)
    x, y = torch.randn(4, K), torch.randn(4, 40)
    want = lora_add(y.clone(), x, LoRAStack(a, b, scales, SLICES), slots, None)
    with backend("triton"):
        got = lora_add(y.half(), x.half(), LoRAStack(a.half(), b.half(), scales, SLICES), slots, _groups(slots))
    assert got.dtype == torch.float16
    assert ((got.float() - want).abs() <= want.abs() * 0.01 + 0.05).all()


@pytest.mark.parametrize("slot", [1, -1, "empty"])
@pytest.mark.parametrize("slices", [SLICES, [(0, 40)]])
def test_the_gemv_adds_the_lora_product_of_its_one_row(slot, slices):
    # Batch-1 decode: the one-row GEMV adds the expand itself (`gemv.LoRAEpilogue`), after
    # the shrink; the result is `lora_add` after the plain product. A slot of -1 or an
    # empty tile (an unused tile of a graph) adds nothing.
    from max_kernels.gemv import GemvConfig, LoRAEpilogue, gemv
    from max_kernels.lora_sgmv import lora_shrink_sgmv

    a, b, scales = _weights(5, slices=slices)
    k = 600  # several splits of the shrink
    a = torch.randn(SLOTS, a.shape[1], k, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    x, w, bias = torch.randn(1, k, generator=g), torch.randn(40, k, generator=g), torch.randn(40, generator=g)
    slots = torch.tensor([-1 if slot == "empty" else slot], dtype=torch.int32)
    want = lora_add(x @ w.T + bias, x, LoRAStack(a, b, scales, slices), slots, None)
    groups = _groups(torch.tensor([-1 if slot == -1 else 1], dtype=torch.int32))
    if slot == "empty":  # a graph's unused tile: slot 1, no rows
        groups.tiles[:, 0] = torch.tensor([0, 0, 1])
    elif slot == -1:
        groups = LoRAGroups(groups.rows, torch.tensor([[0], [0], [-1]], dtype=torch.int32))
    with backend("triton"):
        partials = lora_shrink_sgmv(x, a, groups, RANK, max_splits=8)
        assert partials.shape[0] > 1
        epilogue = LoRAEpilogue(partials, b, scales, groups.tiles, tuple(slices))
        got = gemv(x, w, bias, config=GemvConfig(8, 128), lora=epilogue)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("column_blocks", [1, 2, 4])
def test_the_expand_walks_several_column_blocks_per_program(monkeypatch, column_blocks):
    # A prefill step's expand programs each walk several blocks of 256 output columns
    # (what `_expand_column_blocks` picks on a GPU); ragged slices and a ragged end.
    from max_kernels import lora_sgmv

    slices = [(0, 300), (300, 150), (450, 150)]
    g = torch.Generator().manual_seed(8)
    a = torch.randn(SLOTS, 3 * RANK, K, generator=g)
    b = torch.randn(SLOTS, 600, RANK, generator=g)
    scales = torch.tensor([0.5, 2.0, 0.25])
    slots = torch.tensor([0] * 20 + [2] * 7 + [-1] * 3 + [1] * 18, dtype=torch.int32)
    x, y = torch.randn(len(slots), K, generator=g), torch.randn(len(slots), 600, generator=g)
    want = lora_add(y.clone(), x, LoRAStack(a, b, scales, slices), slots, None)
    monkeypatch.setattr(lora_sgmv, "_expand_column_blocks", lambda *args: column_blocks)
    with backend("triton"):
        got = lora_add(y.clone(), x, LoRAStack(a, b, scales, slices), slots, _groups(slots))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
