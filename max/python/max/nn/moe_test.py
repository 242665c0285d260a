"""Routed experts against a dense computation of the same mixture."""

import torch
import torch.nn.functional as F

from max.nn.checkpoint_layout import Concat, Stack, leaves, parameter_sources
from max.nn.moe import MoEConfig, SparseMoE


def _dense_reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(moe.gate(x).float(), dim=-1)
    weights, chosen = torch.topk(probs, moe.config.num_experts_per_tok, dim=-1)
    if moe.config.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    inter = moe.config.moe_intermediate_size
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], chosen[t]):
            gate_up = moe.experts_gate_up[int(e)]
            h = F.silu(x[t] @ gate_up[:inter].T) * (x[t] @ gate_up[inter:].T)
            out[t] += w * (h @ moe.experts_down[int(e)].T)
    return out


def _moe(norm: bool) -> SparseMoE:
    config = MoEConfig(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=8, norm_topk_prob=norm)
    moe = SparseMoE(16, config, "silu")
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    return moe


def test_sparse_moe_matches_dense_mixture():
    torch.manual_seed(0)
    for norm in (True, False):
        moe = _moe(norm)
        x = torch.randn(11, 16)
        torch.testing.assert_close(moe(x), _dense_reference(moe, x), rtol=1e-5, atol=1e-5)


def test_experts_are_read_from_per_expert_checkpoint_tensors():
    sources = parameter_sources(_moe(True))
    gate_up = sources["experts_gate_up"]
    assert isinstance(gate_up, Stack) and len(gate_up.parts) == 6
    assert gate_up.parts[2] == Concat(("experts.2.gate_proj.weight", "experts.2.up_proj.weight"))
    assert list(leaves(sources["experts_down"]))[-1] == "experts.5.down_proj.weight"
    assert sources["gate.weight"] == "gate.weight"


def test_gpt_oss_routing_biases_and_clamped_swiglu():
    """Softmax over the top-k router logits (router bias included), biased experts, and the
    clamped SwiGLU (up + 1) * gate * sigmoid(alpha * gate), against a dense loop."""
    torch.manual_seed(1)
    config = MoEConfig(
        num_experts=5, num_experts_per_tok=3, moe_intermediate_size=8, routing="topk_softmax",
        router_bias=True, expert_bias=True, activation="clamped_swiglu", swiglu_alpha=1.5, swiglu_limit=0.7,
    )  # fmt: skip
    moe = SparseMoE(16, config, "silu")
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(9, 16)
    logits = x @ moe.gate.weight.T + moe.gate.bias
    top, chosen = torch.topk(logits, 3, dim=-1)
    weights = torch.softmax(top, dim=-1)
    expected = torch.zeros_like(x)
    for t in range(9):
        for w, e in zip(weights[t], chosen[t].tolist()):
            gate_up = moe.experts_gate_up[e] @ x[t] + moe.experts_gate_up_bias[e]
            gate, up = gate_up[:8].clamp(max=0.7), gate_up[8:].clamp(-0.7, 0.7)
            h = (up + 1) * gate * torch.sigmoid(1.5 * gate)
            expected[t] += w * (moe.experts_down[e] @ h + moe.experts_down_bias[e])
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)
    sources = parameter_sources(moe)
    assert sources["experts_gate_up_bias"].parts[1] == Concat(("experts.1.gate_proj.bias", "experts.1.up_proj.bias"))
    assert sources["experts_down_bias"].parts[4] == "experts.4.down_proj.bias"
    assert sources["gate.bias"] == "gate.bias"


def test_route_on_the_cpu_is_the_torch_rule_bit_for_bit():
    """The router's CPU path is the torch rule the layer always ran (nn.Linear, softmax,
    topk), whatever the kernel library does on a GPU, for both rules and in bfloat16."""
    torch.manual_seed(2)
    for routing, bias, norm in (("softmax_topk", False, True), ("softmax_topk", True, False), ("topk_softmax", True, True)):
        config = MoEConfig(
            num_experts=12, num_experts_per_tok=3, moe_intermediate_size=8, routing=routing,
            router_bias=bias, norm_topk_prob=norm,
        )  # fmt: skip
        moe = SparseMoE(16, config, "silu").to(torch.bfloat16)
        with torch.no_grad():
            for p in moe.parameters():
                p.normal_(0, 0.5)
        x = torch.randn(5, 16, dtype=torch.bfloat16)
        logits = moe.gate(x)
        if routing == "topk_softmax":
            top, chosen = torch.topk(logits, 3, dim=-1)
            expected = F.softmax(top, dim=-1, dtype=torch.float32)
        else:
            expected, chosen = torch.topk(F.softmax(logits, dim=-1, dtype=torch.float32), 3, dim=-1)
            if norm:
                expected = expected / expected.sum(dim=-1, keepdim=True)
        weights, ids = moe.route(x)
        assert weights.dtype == torch.float32 and ids.dtype == torch.int64
        assert torch.equal(weights, expected) and torch.equal(ids, chosen)
