"""The few-token GEMV path of `fused_moe` under Triton's interpreter, against the reference.

Shapes are small and odd (H and I not multiples of the tiles, so every K loop and output
slice iterates and the last is partial), T 1..8, k up to 8, E up to 128 (some experts
unused), with and without biases, all three activations, float32 / bfloat16 / float16.
Scratch from torch.empty is poisoned with NaN, so an unwritten row shows.

Tolerances are `sampling_moe_test`'s for fused_moe: float32 1e-5; float16 1e-3 / 2e-3;
bfloat16 2e-2 / 6e-2 (the interpreter truncates float32 to bfloat16 where torch rounds,
and the reference adds the k weighted outputs in bfloat16 where the kernel sums them in
float32).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import max_kernels
import max_kernels.mixture_of_experts as moe_module
from max_kernels.mixture_of_experts import fused_moe, fused_moe_reference
from max_kernels.moe_gemv import GEMV_MAX_TOKENS, ExpertGemvBlocks, fused_moe_gemv, pick_gemv_blocks

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=6e-2),
}
# Small tiles: 2 K steps of gate/up at H = 48, 3 slices of down's K at I = 40.
SMALL = ExpertGemvBlocks(block_n_gate_up=8, block_k_gate_up=32, block_n_down=16, block_k_down=16, num_warps=4)


def _inputs(tokens, hidden, inter, experts, k, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    w_gate_up = (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5).to(dtype)
    w_down = (torch.randn(experts, hidden, inter, generator=g) / inter**0.5).to(dtype)
    b_gate_up = torch.randn(experts, 2 * inter, generator=g).to(dtype) if bias else None
    b_down = torch.randn(experts, hidden, generator=g).to(dtype) if bias else None
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
    weights = torch.softmax(torch.randn(tokens, k, generator=g), dim=-1)
    return (x, w_gate_up, w_down, weights, ids), dict(b_gate_up=b_gate_up, b_down=b_down)


def _poison_empty(monkeypatch):
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


def _run(args, kwargs, activation, blocks=SMALL, alpha=1.702, limit=7.0):
    return fused_moe_gemv(*args, activation=activation, alpha=alpha, limit=limit, blocks=blocks, **kwargs)


@pytest.mark.parametrize(
    "tokens,experts,k,dtype,activation,bias",
    [
        (1, 128, 8, torch.bfloat16, "silu", False),  # Qwen3-30B-A3B's decode step, in small
        (1, 32, 4, torch.bfloat16, "clamped_swiglu", True),  # gpt-oss's
        (3, 6, 4, torch.float32, "silu", True),  # tokens sharing experts
        (2, 8, 2, torch.float16, "gelu_tanh", True),
        (8, 10, 3, torch.bfloat16, "silu", False),
    ],
)
def test_gemv_path_matches_reference(tokens, experts, k, dtype, activation, bias, monkeypatch):
    args, kwargs = _inputs(tokens, 48, 40, experts, k, dtype, bias, seed=tokens * 13 + k)
    if activation == "clamped_swiglu":
        args = (args[0] * 3, *args[1:])  # so that the clamps bind
    expected = fused_moe_reference(*args, activation=activation, alpha=1.702, limit=2.5, **kwargs)
    _poison_empty(monkeypatch)
    got = _run(args, kwargs, activation, limit=2.5)
    assert got.dtype == dtype and got.shape == args[0].shape
    torch.testing.assert_close(got, expected, **TOL[dtype])


def test_int32_ids_and_strided_weights():
    # A tensor-parallel rank's slice of the intermediate features [16, 40): gate/up rows
    # and down columns as views into the full tensors; ids as int32.
    args, kwargs = _inputs(2, 32, 40, 5, 2, torch.float32, True, seed=7)
    x, w_gate_up, w_down, weights, ids = args
    i0, i1 = 16, 40
    rows = torch.cat((torch.arange(i0, i1), 40 + torch.arange(i0, i1)))
    gate_up = w_gate_up[:, rows]  # a copy: [gate; up] of the slice, stacked as the layer holds it
    down = w_down[:, :, i0:i1]  # a strided view
    b_gate_up = kwargs["b_gate_up"][:, rows]
    sliced = (x, gate_up, down, weights, ids.to(torch.int32))
    kw = dict(b_gate_up=b_gate_up, b_down=kwargs["b_down"])
    expected = fused_moe_reference(*sliced, activation="silu", **kw)
    torch.testing.assert_close(_run(sliced, kw, "silu"), expected, **TOL[torch.float32])


def test_default_tiles_follow_the_gemv_rule():
    assert pick_gemv_blocks(2048, 768) == ExpertGemvBlocks(2, 1024, 4, 1024)  # Qwen3-30B-A3B
    assert pick_gemv_blocks(2880, 2880) == ExpertGemvBlocks(2, 1024, 4, 1024)  # gpt-oss-20b
    assert pick_gemv_blocks(64, 32) == ExpertGemvBlocks(32, 64, 128, 32)


def test_fused_moe_takes_the_gemv_path_up_to_its_token_limit(monkeypatch):
    calls = []
    real = moe_module.fused_moe_gemv

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(moe_module, "fused_moe_gemv", spy)
    for tokens in (1, GEMV_MAX_TOKENS, GEMV_MAX_TOKENS + 1):
        args, kwargs = _inputs(tokens, 32, 16, 4, 2, torch.float32, False, seed=tokens)
        expected = fused_moe_reference(*args, **kwargs)
        torch.testing.assert_close(fused_moe(*args, **kwargs), expected, **TOL[torch.float32])
    assert calls == [1, GEMV_MAX_TOKENS]
    with max_kernels.backend("triton"):
        args, kwargs = _inputs(2, 32, 16, 4, 2, torch.bfloat16, True, seed=9)
        got = max_kernels.fused_moe(*args, activation="gelu_tanh", **kwargs)
        torch.testing.assert_close(got, fused_moe_reference(*args, activation="gelu_tanh", **kwargs), **TOL[torch.bfloat16])
    assert calls == [1, GEMV_MAX_TOKENS, 2]
