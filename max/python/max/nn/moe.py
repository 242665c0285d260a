"""Mixture of experts: a router picks the top-k experts of each token (Qwen3-MoE style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.checkpoint_layout import Concat, Stack, whole_or_shard
from max.nn.parallel import all_reduce, tensor_parallel
from max_kernels import fused_moe

# Gated activations the grouped-expert kernel knows, by Hugging Face `hidden_act` name.
_MOE_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


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
    k kept weights are renormalized to sum to one. The experts' weights are stacked, one
    3-D tensor per projection ([E, 2I, H] for gate and up, [E, H, I] for down), so the
    grouped-expert kernel runs every expert of a step in two launches. Under tensor
    parallelism every rank holds a slice of every expert's intermediate features (as the
    dense MLP does) and the ranks' outputs are summed.
    """

    def __init__(self, hidden_size: int, config: MoEConfig, act: str) -> None:
        super().__init__()
        self.config = config
        self.activation = _MOE_ACTIVATIONS.get(act)
        if self.activation is None:
            raise ValueError(f"mixture-of-experts activation {act!r} is not supported")
        self.tp = tensor_parallel()
        e, i = config.num_experts, config.moe_intermediate_size
        self.intermediate = self.tp.split(i, "the experts' intermediate size")
        local = self.intermediate[1] - self.intermediate[0]
        self.gate = nn.Linear(hidden_size, e, bias=False)
        self.experts_gate_up = nn.Parameter(torch.empty(e, 2 * local, hidden_size))
        self.experts_down = nn.Parameter(torch.empty(e, hidden_size, local))

    def checkpoint_layout(self) -> dict:
        """Checkpoints store each expert's gate, up and down projections apart."""
        experts = range(self.config.num_experts)
        bounds, full = self.intermediate, self.config.moe_intermediate_size

        def rows(e: int, proj: str):
            return whole_or_shard(f"experts.{e}.{proj}_proj.weight", 0, bounds, full)

        return {
            "experts_gate_up": Stack(tuple(Concat((rows(e, "gate"), rows(e, "up"))) for e in experts)),
            "experts_down": Stack(
                tuple(whole_or_shard(f"experts.{e}.down_proj.weight", 1, bounds, full) for e in experts)
            ),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.config.num_experts_per_tok, dim=-1)
        if self.config.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = fused_moe(x, self.experts_gate_up, self.experts_down, weights, chosen, activation=self.activation)
        return all_reduce(out, self.tp)
