"""Mixture of experts: a router picks the top-k experts of each token (Qwen3-MoE, gpt-oss)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.checkpoint_layout import Concat, Stack, whole_or_shard
from max.nn.parallel import all_reduce, tensor_parallel
from max_kernels import fused_moe

# Gated activations the grouped-expert kernel knows, by Hugging Face `hidden_act` name (and
# gpt-oss's clamped SwiGLU, which its config does not name).
_MOE_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "clamped_swiglu": "clamped_swiglu",
}

# How router logits become the chosen experts' weights.
SOFTMAX_TOPK = "softmax_topk"
TOPK_SOFTMAX = "topk_softmax"


@dataclass
class MoEConfig:
    """Routed-expert settings, as Hugging Face's Qwen3-MoE config names them, plus gpt-oss's.

    `routing`: "softmax_topk" (Qwen3-MoE: a softmax over all experts, the k largest kept and,
    with `norm_topk_prob`, renormalized) or "topk_softmax" (gpt-oss: the k largest router
    logits, then a softmax over those k). `router_bias` and `expert_bias` add biases to the
    router and to every expert's projections. `activation` names the experts' gated
    activation when it is not the config's `hidden_act`: gpt-oss's "clamped_swiglu", with
    its sigmoid gain `swiglu_alpha` and clamp `swiglu_limit`.
    """

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool = True
    routing: str = SOFTMAX_TOPK
    router_bias: bool = False
    expert_bias: bool = False
    activation: str | None = None
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0


class SparseMoE(nn.Module):
    """Routes each token to its top-k experts and sums their outputs by router weight.

    The router's softmax is taken over all experts in float32; with `norm_topk_prob` the
    k kept weights are renormalized to sum to one. The experts' weights are stacked, one
    3-D tensor per projection ([E, 2I, H] for gate and up, [E, H, I] for down), so the
    grouped-expert kernel runs every expert of a step in two launches. Under tensor
    parallelism every rank holds a slice of every expert's intermediate features (as the
    dense MLP does) and the ranks' outputs are summed; the down projections' biases, which
    are not split, are added once, after the sum.
    """

    # The router stays float under weight-only quantization (max.nn.quantized_linear): its
    # top-k choice flips on small changes of its logits, and it is tiny.
    unquantized_children = ("gate",)

    def __init__(self, hidden_size: int, config: MoEConfig, act: str) -> None:
        super().__init__()
        self.config = config
        name = config.activation or act
        self.activation = _MOE_ACTIVATIONS.get(name)
        if self.activation is None:
            raise ValueError(f"mixture-of-experts activation {name!r} is not supported")
        if config.routing not in (SOFTMAX_TOPK, TOPK_SOFTMAX):
            raise ValueError(f"mixture-of-experts routing {config.routing!r} is not supported")
        self.tp = tensor_parallel()
        e, i = config.num_experts, config.moe_intermediate_size
        self.intermediate = self.tp.split(i, "the experts' intermediate size")
        local = self.intermediate[1] - self.intermediate[0]
        self.gate = nn.Linear(hidden_size, e, bias=config.router_bias)
        self.experts_gate_up = nn.Parameter(torch.empty(e, 2 * local, hidden_size))
        self.experts_down = nn.Parameter(torch.empty(e, hidden_size, local))
        self.experts_gate_up_bias = self.experts_down_bias = None
        if config.expert_bias:
            self.experts_gate_up_bias = nn.Parameter(torch.empty(e, 2 * local))
            self.experts_down_bias = nn.Parameter(torch.empty(e, hidden_size))

    def checkpoint_layout(self) -> dict:
        """Checkpoints store each expert's gate, up and down projections apart."""
        experts = range(self.config.num_experts)
        bounds, full = self.intermediate, self.config.moe_intermediate_size

        def rows(e: int, proj: str, kind: str = "weight"):
            return whole_or_shard(f"experts.{e}.{proj}_proj.{kind}", 0, bounds, full)

        layout = {
            "experts_gate_up": Stack(tuple(Concat((rows(e, "gate"), rows(e, "up"))) for e in experts)),
            "experts_down": Stack(
                tuple(whole_or_shard(f"experts.{e}.down_proj.weight", 1, bounds, full) for e in experts)
            ),
        }
        if self.experts_gate_up_bias is not None:
            layout["experts_gate_up_bias"] = Stack(
                tuple(Concat((rows(e, "gate", "bias"), rows(e, "up", "bias"))) for e in experts)
            )
            layout["experts_down_bias"] = Stack(tuple(f"experts.{e}.down_proj.bias" for e in experts))
        return layout

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 weights [T, k], expert ids [T, k]) of each token's chosen experts."""
        c = self.config
        logits = self.gate(x)
        if c.routing == TOPK_SOFTMAX:
            top, chosen = torch.topk(logits, c.num_experts_per_tok, dim=-1)
            return F.softmax(top, dim=-1, dtype=torch.float32), chosen
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, c.num_experts_per_tok, dim=-1)
        if c.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.route(x)
        single = self.tp.size == 1
        down_bias = self.experts_down_bias
        out = fused_moe(
            x,
            self.experts_gate_up,
            self.experts_down,
            weights,
            chosen,
            activation=self.activation,
            b_gate_up=self.experts_gate_up_bias,
            b_down=down_bias if single else None,
            alpha=self.config.swiglu_alpha,
            limit=self.config.swiglu_limit,
        )
        if single:
            return out
        out = all_reduce(out, self.tp)
        if down_bias is not None:
            # Each rank's partial sums lack the (unsplit) bias: add it once, by router weight.
            out = out + (weights.to(x.dtype)[..., None] * down_bias[chosen]).sum(dim=1)
        return out
