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
