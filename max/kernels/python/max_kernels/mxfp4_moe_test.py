"""MXFP4 fused MoE: the torch reference against the decoded-weight reference, and the Triton
kernels (through Triton's interpreter) against the torch reference.

Weights are random bytes (every E2M1 code, both signs, both zeros) with scales 118..130
(2**-9 .. 2**3), so decoded values span 2**-10 .. 48; odd shapes (H and I multiples of 32,
not of the tiles; T from 1 to 40; E 4..8; k 1..4); with and without biases; SwiGLU and
gpt-oss's clamped SwiGLU.

Tolerances: `fused_moe_mxfp4_reference` must equal `fused_moe_reference` on the decoded,
de-interleaved weights bit for bit (same operations on the same numbers). The kernels
multiply the same decoded values and differ by the order of float32 sums, the final sum
over k (float32, rounded once, where the reference adds each expert's output in x's
dtype), and, in bfloat16 under the interpreter, by its truncating float32 -> bfloat16
casts of intermediates (gate, up, act, h); so |diff| <= rtol * |ref| + atol * max|ref|
with (rtol, atol) = (1e-5, 1e-5) for float32, (2e-3, 2e-3) for float16 and (3e-2, 2e-2)
for bfloat16, and the mean |diff| <= 5e-3 of the mean |ref| in bfloat16.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import max_kernels
from max_kernels.mixture_of_experts import MoeBlocks, fused_moe_reference
from max_kernels.mxfp4_dequant import decode_mxfp4_rows
from max_kernels.mxfp4_gemv import GEMV_FEW_TOKENS, GEMV_ONE_TOKEN, GemvBlocks, pick_gemv_blocks
from max_kernels.mxfp4_moe import (
    FP4_VALUES,
    _fused_moe_mxfp4,
    decode_mxfp4,
    fused_moe_mxfp4,
    fused_moe_mxfp4_reference,
)

TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (3e-2, 2e-2),
}
# Small tiles, so that every K loop and every output slice iterates.
SMALL_GEMV = GemvBlocks(block_n_gate_up=16, block_g_gate_up=1, block_n_down=32, block_g_down=1, num_warps=2)
SMALL_MMA = MoeBlocks(16, 8, 16, 32, num_warps=4, num_stages=2)


def _packed_inputs(tokens, hidden, inter, experts, k, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(tokens, hidden, generator=g) / hidden**0.5).to(dtype)
    gate_up_blocks = torch.randint(0, 256, (experts, 2 * inter, hidden // 32, 16), generator=g, dtype=torch.uint8)
    gate_up_scales = torch.randint(118, 131, (experts, 2 * inter, hidden // 32), generator=g, dtype=torch.uint8)
    down_blocks = torch.randint(0, 256, (experts, hidden, inter // 32, 16), generator=g, dtype=torch.uint8)
    down_scales = torch.randint(118, 131, (experts, hidden, inter // 32), generator=g, dtype=torch.uint8)
    b_gate_up = torch.randn(experts, 2 * inter, generator=g).to(dtype) if bias else None
    b_down = torch.randn(experts, hidden, generator=g).to(dtype) if bias else None
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]).to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, k, generator=g), dim=-1)
    args = (x, gate_up_blocks, gate_up_scales, down_blocks, down_scales, weights, ids)
    return args, dict(b_gate_up=b_gate_up, b_down=b_down)


def _decoded(args, kwargs):
    """The arguments of `fused_moe_reference`: weights decoded in float32, rounded to x's
    dtype, gate/up rows (and bias) de-interleaved into [gate; up], as the load path does."""
    x, gate_up_blocks, gate_up_scales, down_blocks, down_scales, weights, ids = args
    w = decode_mxfp4(gate_up_blocks, gate_up_scales).to(x.dtype)
    w_gate_up = torch.cat((w[:, 0::2], w[:, 1::2]), dim=1)
    w_down = decode_mxfp4(down_blocks, down_scales).to(x.dtype)
    b = kwargs["b_gate_up"]
    b_gate_up = torch.cat((b[:, 0::2], b[:, 1::2]), dim=1) if b is not None else None
    return (x, w_gate_up, w_down, weights, ids), dict(b_gate_up=b_gate_up, b_down=kwargs["b_down"])


def _check(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    rtol, atol = TOL[expected.dtype]
    got, expected = got.float(), expected.float()
    assert torch.isfinite(got).all()
    diff = (got - expected).abs()
    bound = rtol * expected.abs() + atol * expected.abs().max()
    assert (diff <= bound).all(), (diff - bound).max().item()
    if expected.dtype == torch.bfloat16:
        assert diff.mean() <= 5e-3 * expected.abs().mean()


# ----------------------------------------------------------------------------- reference


def test_decode_mxfp4_follows_the_e2m1_table_and_the_scales():
    codes = torch.arange(256, dtype=torch.uint8)
    blocks = codes.reshape(1, 16, 16)  # one row of 16 blocks: every byte once
    scales = torch.tensor([[0, 1, 2, 100, 118, 127, 130, 200, 240, 127, 127, 127, 127, 127, 127, 127]], dtype=torch.uint8)
    got = decode_mxfp4(blocks, scales)
    assert got.dtype == torch.float32 and got.shape == (1, 512)
    for i in range(512):
        byte = int(codes[i // 2])
        code = byte & 0x0F if i % 2 == 0 else byte >> 4
        expected = FP4_VALUES[code] * 2.0 ** (int(scales[0, i // 32]) - 127)
        assert got[0, i].item() == expected
        assert got[0, i].signbit().item() == (code >= 8)  # -0.0 keeps its sign


@pytest.mark.parametrize(
    "tokens,hidden,inter,experts,k",
    [(1, 32, 32, 4, 2), (7, 96, 64, 6, 3), (40, 64, 96, 8, 4), (5, 64, 32, 5, 1)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["silu", "clamped_swiglu"])
@pytest.mark.parametrize("bias", [False, True])
def test_reference_equals_fused_moe_reference_on_decoded_weights(tokens, hidden, inter, experts, k, dtype, activation, bias):
    args, kwargs = _packed_inputs(tokens, hidden, inter, experts, k, dtype, bias, seed=tokens)
    got = fused_moe_mxfp4_reference(*args, activation=activation, **kwargs)
    dargs, dkwargs = _decoded(args, kwargs)
    expected = fused_moe_reference(*dargs, activation=activation, **dkwargs)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_reference_decodes_one_used_expert_at_a_time(monkeypatch):
    import max_kernels.mxfp4_moe as mod

    seen = []
    decode = mod.decode_mxfp4

    def spy(blocks, scales):
        seen.append(tuple(blocks.shape))
        return decode(blocks, scales)

    monkeypatch.setattr(mod, "decode_mxfp4", spy)
    args, kwargs = _packed_inputs(3, 64, 32, 8, 2, torch.float32, True, seed=3)
    fused_moe_mxfp4_reference(*args, activation="clamped_swiglu", **kwargs)
    used = args[6].unique().numel()
    assert len(seen) == 2 * used
    assert all(len(shape) == 3 for shape in seen)  # [rows, groups, 16]: one expert


def test_mismatched_shapes_are_refused():
    args, kwargs = _packed_inputs(2, 64, 32, 4, 2, torch.float32, False)
    x, gub, gus, db, ds, w, ids = args
    with pytest.raises(ValueError, match="do not fit"):
        fused_moe_mxfp4_reference(x, gub, gus, db[:, :32], ds[:, :32], w, ids)
    with pytest.raises(ValueError, match="do not match"):
        fused_moe_mxfp4_reference(x, gub, gus[:, :, :1], db, ds, w, ids)
    with pytest.raises(ValueError, match="hidden size"):
        _fused_moe_mxfp4(x[:, :32], gub, gus, db, ds, w, ids, "silu", None, None, 1.0, 1.0, path="gemv")


# ----------------------------------------------------------------------------- Triton


def _poison_empty(monkeypatch):
    """torch.empty filled with NaN, so that scratch rows the kernels fail to write show."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


@pytest.mark.parametrize(
    "tokens,dtype,activation,bias",
    [
        (1, torch.bfloat16, "clamped_swiglu", True),  # gpt-oss's batch-1 decode step
        (3, torch.float32, "silu", False),
        (2, torch.float16, "clamped_swiglu", True),
    ],
)
def test_gemv_path_matches_reference(tokens, dtype, activation, bias, monkeypatch):
    args, kwargs = _packed_inputs(tokens, 96, 64, 6, 4, dtype, bias, seed=10 + tokens)
    expected = fused_moe_mxfp4_reference(*args, activation=activation, **kwargs)
    _poison_empty(monkeypatch)
    got = _fused_moe_mxfp4(
        *args, activation, kwargs["b_gate_up"], kwargs["b_down"], 1.702, 7.0, path="gemv", gemv_blocks=SMALL_GEMV
    )
    _check(got, expected)


@pytest.mark.parametrize(
    "tokens,dtype,activation,bias",
    [
        (9, torch.bfloat16, "clamped_swiglu", True),
        (13, torch.float32, "silu", True),
        (6, torch.float16, "silu", False),
    ],
)
@pytest.mark.parametrize("path", ["mma", "dequant"])
def test_tensor_core_path_matches_reference(tokens, dtype, activation, bias, path, monkeypatch):
    args, kwargs = _packed_inputs(tokens, 96, 64, 5, 3, dtype, bias, seed=20 + tokens)
    expected = fused_moe_mxfp4_reference(*args, activation=activation, **kwargs)
    _poison_empty(monkeypatch)
    got = _fused_moe_mxfp4(
        *args, activation, kwargs["b_gate_up"], kwargs["b_down"], 1.702, 7.0, path=path, mma_blocks=SMALL_MMA
    )
    _check(got, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_rows_writes_the_decoded_weights_and_splits_gate_from_up(dtype):
    # A tensor-parallel rank's slice (strided rows, groups [1, 3) of 4), every byte value.
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (3, 12, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(118, 131, (3, 12, 4), generator=g, dtype=torch.uint8)
    blocks, scales = blocks[:, 2:10, 1:3], scales[:, 2:10, 1:3]
    decoded = decode_mxfp4(blocks, scales).to(dtype)
    assert torch.equal(decode_mxfp4_rows(blocks, scales, dtype), decoded)
    split = torch.cat((decoded[:, 0::2], decoded[:, 1::2]), dim=1)
    assert torch.equal(decode_mxfp4_rows(blocks, scales, dtype, deinterleave=True), split)
    with pytest.raises(ValueError, match="odd"):
        decode_mxfp4_rows(blocks[:, :3], scales[:, :3], dtype, deinterleave=True)


def test_tensor_parallel_slices_are_read_in_place():
    # A rank's share of the intermediate features [i0, i1): gate/up rows [2 i0, 2 i1) and
    # down's K blocks [i0/32, i1/32), both views into the full tensors (strided).
    args, kwargs = _packed_inputs(2, 64, 96, 4, 2, torch.float32, True, seed=30)
    x, gub, gus, db, ds, w, ids = args
    i0, i1 = 32, 96
    sliced = (x, gub[:, 2 * i0 : 2 * i1], gus[:, 2 * i0 : 2 * i1], db[:, :, i0 // 32 : i1 // 32], ds[:, :, i0 // 32 : i1 // 32], w, ids)
    b_gate_up = kwargs["b_gate_up"][:, 2 * i0 : 2 * i1]
    expected = fused_moe_mxfp4_reference(*sliced, activation="clamped_swiglu", b_gate_up=b_gate_up, b_down=kwargs["b_down"])
    for path in ("gemv", "mma", "dequant"):
        got = _fused_moe_mxfp4(
            *sliced, "clamped_swiglu", b_gate_up, kwargs["b_down"], 1.702, 7.0, path=path,
            gemv_blocks=SMALL_GEMV, mma_blocks=SMALL_MMA,
        )  # fmt: skip
        _check(got, expected)


def test_ops_dispatch_runs_triton_with_default_tiles():
    args, kwargs = _packed_inputs(6, 64, 64, 8, 4, torch.bfloat16, True, seed=40)
    expected = fused_moe_mxfp4_reference(*args, activation="clamped_swiglu", **kwargs)
    with max_kernels.backend("torch"):
        assert torch.equal(max_kernels.fused_moe_mxfp4(*args, activation="clamped_swiglu", **kwargs), expected)
    with max_kernels.backend("triton"):
        # One token takes the GEMV path, six the tensor-core path (GEMV_MAX_TOKENS = 4).
        one = tuple(a[:1] if i in (0, 5, 6) else a for i, a in enumerate(args))
        _check(max_kernels.fused_moe_mxfp4(*one, activation="clamped_swiglu", **kwargs), expected[:1])
        _check(fused_moe_mxfp4(*args, activation="clamped_swiglu", **kwargs), expected)


def test_gemv_tiles_are_picked_by_routed_rows():
    assert pick_gemv_blocks(4) == GEMV_ONE_TOKEN  # gpt-oss-20b at one token
    assert pick_gemv_blocks(8) == GEMV_ONE_TOKEN
    assert pick_gemv_blocks(16) == GEMV_FEW_TOKENS  # at four tokens
    assert GEMV_ONE_TOKEN == GemvBlocks(8, 8, 8, 16, num_warps=4)
    assert GEMV_FEW_TOKENS == GemvBlocks(8, 8, 32, 4, num_warps=1)


def test_gemv_path_sums_the_slots_itself_and_leaves_counters_zeroed(monkeypatch):
    # Three tokens, four slots: the last of each token's four programs per slice adds them.
    import max_kernels.mxfp4_gemv as gemv_module
    from max_kernels import grid_counters

    args, kwargs = _packed_inputs(3, 64, 64, 8, 4, torch.bfloat16, True, seed=50)
    expected = fused_moe_mxfp4_reference(*args, activation="clamped_swiglu", **kwargs)
    _poison_empty(monkeypatch)
    run = lambda: _fused_moe_mxfp4(  # noqa: E731
        *args, "clamped_swiglu", kwargs["b_gate_up"], kwargs["b_down"], 1.702, 7.0, path="gemv", gemv_blocks=SMALL_GEMV
    )
    folded = run()
    _check(folded, expected)
    assert int(grid_counters.counters(args[0].device).abs().sum()) == 0
    # Asked not to, or without counters (first use inside a graph capture): summed by torch.
    unfolded = _fused_moe_mxfp4(
        *args, "clamped_swiglu", kwargs["b_gate_up"], kwargs["b_down"], 1.702, 7.0, path="gemv",
        gemv_blocks=SMALL_GEMV, sum_slots_in_kernel=False,
    )  # fmt: skip
    _check(unfolded, expected)
    monkeypatch.setattr(gemv_module.grid_counters, "counters", lambda device, needed=1: None)
    _check(run(), expected)


def test_default_few_token_tiles_match_reference():
    args, kwargs = _packed_inputs(3, 96, 64, 6, 4, torch.float16, True, seed=60)
    expected = fused_moe_mxfp4_reference(*args, activation="silu", **kwargs)
    _check(fused_moe_mxfp4(*args, activation="silu", **kwargs), expected)
