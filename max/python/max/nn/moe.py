"""Mixture of experts: a router picks the top-k experts of each token (Qwen3-MoE style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.mlp import GatedMLP


@dataclass
class MoEConfig:
    """Routed-expert settings, as Hugging Face's Qwen3-MoE config names them."""

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool = True


class SparseMoE(nn.Module):
    """Routes each token to its top-k experts and sums their outputs by router weight.

    The router's softmax is taken over all experts in float32; with `norm_topk_prob` the
    k kept weights are renormalized to sum to one. Tokens are grouped by expert, so each
    expert runs once per step on the tokens routed to it.
    """

    def __init__(self, hidden_size: int, config: MoEConfig, act: str) -> None:
        super().__init__()
        self.config = config
        self.gate = nn.Linear(hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(hidden_size, config.moe_intermediate_size, act)
            for _ in range(config.num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        router_logits = self.gate(x)
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.config.num_experts_per_tok, dim=-1)
        if self.config.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        # Sort the (token, slot) pairs by expert so each expert sees one contiguous slice.
        flat_expert = chosen.flatten()
        order = torch.argsort(flat_expert, stable=True)
        counts = torch.bincount(flat_expert, minlength=self.config.num_experts).tolist()
        token_of = order // self.config.num_experts_per_tok
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                rows = order[start : start + count]
                tokens = token_of[start : start + count]
                y = expert(x[tokens]) * weights.flatten()[rows, None]
                out.index_add_(0, tokens, y)
            start += count
        return out
