"""Routed experts against a dense computation of the same mixture."""

import torch

from max.nn.moe import MoEConfig, SparseMoE


def _dense_reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(moe.gate(x).float(), dim=-1)
    weights, chosen = torch.topk(probs, moe.config.num_experts_per_tok, dim=-1)
    if moe.config.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t], chosen[t]):
            out[t] += w * moe.experts[int(e)](x[t : t + 1])[0]
    return out


def test_sparse_moe_matches_dense_mixture():
    torch.manual_seed(0)
    for norm in (True, False):
        moe = SparseMoE(16, MoEConfig(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=8, norm_topk_prob=norm), "silu")
        x = torch.randn(11, 16)
        torch.testing.assert_close(moe(x), _dense_reference(moe, x), rtol=1e-5, atol=1e-6)
