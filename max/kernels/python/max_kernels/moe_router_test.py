"""The fused MoE router under Triton's interpreter, against the torch rule and torch.topk's ties.

Inputs of two kinds:
- exact: x and W hold small integers (times a power of two), so every float32 sum is exact
  in any order and every logit a bfloat16 and float16 value; the kernel's logits then equal
  the reference's bit for bit, whatever the dtype (the interpreter's float32 -> bfloat16
  casts truncate where torch rounds, which exact values do not see). Many logits tie.
  Expected: the ids of a stable descending sort of the logits (the k largest, equal ones
  in ascending id: torch.topk's choice on CUDA, whose gatherTopK keeps the ties at the
  k-th value in index order), and weights from torch's float32 softmax within 2e-6.
- random float32: the reference itself (`moe_route_reference`, `SparseMoE.route`'s rule):
  ids equal (no near-ties at these seeds), weights within 1e-5.
Both routing rules, with and without the router bias and the renormalization, T 1..16,
k up to 8, E up to 128.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import max_kernels
from max_kernels import grid_counters
from max_kernels.moe_router import (
    ROUTER_MAX_EXPERTS,
    ROUTER_MAX_TOKENS,
    SOFTMAX_TOPK,
    TOPK_SOFTMAX,
    _route,
    kernel_applies,
    moe_route,
    moe_route_reference,
)


def _exact_inputs(tokens, experts, hidden, dtype, bias, seed):
    """Integer-valued x in [-2, 2] and W in [-3, 3] / 8: logits are multiples of 1/8 below
    2 ** 8 in magnitude, exact in float32, bfloat16 and float16; many are equal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (tokens, hidden), generator=g).to(dtype)
    w = (torch.randint(-3, 4, (experts, hidden), generator=g) / 8).to(dtype)
    b = (torch.randint(-8, 9, (experts,), generator=g) / 4).to(dtype) if bias else None
    return x, w, b


def _expected(x, w, b, top_k, routing, renormalize):
    """Ids of a stable descending sort of the exact logits; weights by torch's softmax."""
    logits = x.double() @ w.double().T + (b.double() if b is not None else 0.0)
    logits = logits.float()
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :top_k]
    top = logits.gather(1, order)
    if routing == TOPK_SOFTMAX:
        return torch.softmax(top, dim=-1), order
    probs = torch.softmax(logits, dim=-1).gather(1, order)
    if renormalize:
        probs = probs / probs.sum(-1, keepdim=True)
    return probs, order


CASES = [
    # tokens, experts, hidden, k, routing, renormalize, bias, dtype
    (1, 128, 64, 8, SOFTMAX_TOPK, True, False, torch.bfloat16),  # Qwen3-MoE's rule
    (1, 32, 96, 4, TOPK_SOFTMAX, True, True, torch.bfloat16),  # gpt-oss's rule
    (3, 64, 40, 6, SOFTMAX_TOPK, False, True, torch.float16),
    (8, 16, 32, 1, TOPK_SOFTMAX, True, False, torch.float32),
    (5, 100, 48, 8, SOFTMAX_TOPK, True, True, torch.float32),  # E not a power of two
    (16, 24, 16, 3, TOPK_SOFTMAX, True, True, torch.bfloat16),
]


@pytest.mark.parametrize("tokens,experts,hidden,k,routing,renormalize,bias,dtype", CASES)
def test_exact_logits_pick_torch_topk_experts(tokens, experts, hidden, k, routing, renormalize, bias, dtype):
    x, w, b = _exact_inputs(tokens, experts, hidden, dtype, bias, seed=tokens * 7 + k)
    expected_w, expected_ids = _expected(x, w, b, k, routing, renormalize)
    weights, ids = moe_route(x, w, b, k, routing=routing, renormalize=renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int64
    assert weights.shape == ids.shape == (tokens, k)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_w, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("routing", [SOFTMAX_TOPK, TOPK_SOFTMAX])
def test_small_tiles_loop_over_the_hidden_size(routing):
    # 4 experts a program, 16 columns a step: every program loops (H = 72, the last slice
    # partial) and the last expert block is partial (E = 40).
    x, w, b = _exact_inputs(3, 40, 72, torch.bfloat16, True, seed=5)
    expected_w, expected_ids = _expected(x, w, b, 5, routing, True)
    weights, ids = _route(x, w, b, 5, routing, True, block_e=4, block_h=16)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_w, rtol=2e-6, atol=2e-7)


def test_ties_at_the_kth_value_go_to_the_lowest_ids():
    # One-hot tokens read single columns of W: row 0's logits are W[:, 0] exactly.
    experts, k = 32, 4
    column = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0, 3.0, 3.0, 1.0] * 4)
    w = torch.zeros(experts, 8)
    w[:, 0] = column
    x = torch.zeros(2, 8)
    x[0, 0] = 1.0  # logits: 3.0 at ids 1, 3, 5, 6, 9, 11, ...
    x[1, 1] = 1.0  # logits: all 0.0
    for routing in (SOFTMAX_TOPK, TOPK_SOFTMAX):
        weights, ids = moe_route(x, w, None, k, routing=routing)
        assert ids.tolist() == [[1, 3, 5, 6], [0, 1, 2, 3]]
        torch.testing.assert_close(weights, torch.full((2, k), 1 / k))


@pytest.mark.parametrize(
    "tokens,experts,hidden,k,routing,renormalize,bias",
    [
        (1, 128, 64, 8, SOFTMAX_TOPK, True, False),
        (4, 32, 80, 4, TOPK_SOFTMAX, True, True),
        (7, 60, 33, 5, SOFTMAX_TOPK, False, True),
    ],
)
def test_random_float32_matches_reference(tokens, experts, hidden, k, routing, renormalize, bias):
    g = torch.Generator().manual_seed(tokens + experts)
    x = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(experts, hidden, generator=g) / hidden**0.5
    b = torch.randn(experts, generator=g) if bias else None
    expected_w, expected_ids = moe_route_reference(x, w, b, k, routing=routing, renormalize=renormalize)
    weights, ids = moe_route(x, w, b, k, routing=routing, renormalize=renormalize)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_w, rtol=1e-5, atol=1e-6)


def test_counter_is_left_at_zero_and_calls_repeat():
    x, w, b = _exact_inputs(2, 40, 24, torch.float32, True, seed=3)
    first = moe_route(x, w, b, 3, routing=TOPK_SOFTMAX)
    assert int(grid_counters.counters(x.device)[0]) == 0
    second = moe_route(x, w, b, 3, routing=TOPK_SOFTMAX)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_ops_dispatch(monkeypatch):
    x, w, b = _exact_inputs(3, 16, 32, torch.float32, True, seed=4)
    reference = moe_route_reference(x, w, b, 2, routing=SOFTMAX_TOPK)
    with max_kernels.backend("torch"):
        got = max_kernels.moe_route(x, w, b, 2, routing=SOFTMAX_TOPK)
        assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    calls = []
    import max_kernels.moe_router as mod

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return moe_route(*args, **kwargs)

    monkeypatch.setattr(mod, "moe_route", spy)
    with max_kernels.backend("triton"):
        got = max_kernels.moe_route(x, w, b, 2, routing=SOFTMAX_TOPK)
        torch.testing.assert_close(got[0], reference[0])
        assert torch.equal(got[1], reference[1])
        # More tokens than the kernel takes: the torch rule, bit for bit.
        many = x.repeat(ROUTER_MAX_TOKENS, 1)
        got = max_kernels.moe_route(many, w, b, 2, routing=SOFTMAX_TOPK)
        assert torch.equal(got[1], reference[1].repeat(ROUTER_MAX_TOKENS, 1))
    assert calls == [3]


def test_kernel_applies_only_where_it_can():
    x = torch.zeros(2, 32)
    w = torch.zeros(8, 32)
    assert kernel_applies(x, w, None, 2)
    assert not kernel_applies(torch.zeros(ROUTER_MAX_TOKENS + 1, 32), w, None, 2)
    assert not kernel_applies(x, torch.zeros(ROUTER_MAX_EXPERTS + 1, 32), None, 2)
    assert not kernel_applies(x, w.double(), None, 2)
    assert not kernel_applies(x, w, None, 9)
    assert not kernel_applies(x, torch.zeros(32, 8).T, None, 2)  # rows not contiguous
    assert grid_counters.counters(x.device, grid_counters.NUM_COUNTERS + 1) is None
    with pytest.raises(ValueError, match="routing"):
        moe_route(x, w, None, 2, routing="softmax")
