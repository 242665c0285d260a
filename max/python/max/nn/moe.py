"""Mixture of experts: a router picks the top-k experts of each token (Qwen3-MoE, gpt-oss,
DeepSeek-V2 with its shared experts and group-limited routing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import max_kernels
from max.nn.expert_weights import EXPERT_WEIGHTS
from max.nn.mlp import GatedMLP
from max.nn.parallel import all_reduce, tensor_parallel
from max_kernels.moe_router import SOFTMAX_TOPK, TOPK_SOFTMAX

# The routing rules (SOFTMAX_TOPK, TOPK_SOFTMAX: how router logits become the chosen
# experts' weights) are named once, by the kernel library's router (`max_kernels.moe_route`).

# Gated activations the grouped-expert kernel knows, by Hugging Face `hidden_act` name (and
# gpt-oss's clamped SwiGLU, which its config does not name).
_MOE_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "clamped_swiglu": "clamped_swiglu",
}


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
    # How the experts' weights are held: "dense" (float) or "mxfp4" (packed, gpt-oss); see
    # max.nn.expert_weights.
    expert_weights: str = "dense"
    # DeepSeek-V2: experts every token runs (one gated MLP `num_shared_experts` times as
    # wide), routed weights scaled by `routed_scaling_factor`, and, with `num_groups`, the
    # top-k taken only among the `topk_groups` groups whose best expert scores highest.
    num_shared_experts: int = 0
    routed_scaling_factor: float = 1.0
    num_groups: int | None = None
    topk_groups: int | None = None

    @property
    def grouped(self) -> bool:
        """Whether routing is DeepSeek's (group-limited, scaled): the torch rule below."""
        return self.num_groups is not None or self.routed_scaling_factor != 1.0


def grouped_route(x: torch.Tensor, weight: torch.Tensor, config: MoEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2's routing: a float32 softmax over all experts; with groups, experts outside
    the `topk_groups` groups of highest best score are zeroed; the top k kept (renormalized
    under `norm_topk_prob`) and scaled by `routed_scaling_factor`."""
    scores = F.linear(x.float(), weight.float()).softmax(dim=-1)
    groups = config.num_groups or 1
    if groups > 1:
        per_group = scores.view(-1, groups, config.num_experts // groups)
        best = per_group.max(dim=-1).values.topk(config.topk_groups or groups, dim=-1).indices
        keep = torch.zeros_like(per_group[..., 0], dtype=torch.bool).scatter_(1, best, True)
        scores = per_group.masked_fill(~keep[..., None], 0.0).view_as(scores)
    weights, chosen = scores.topk(config.num_experts_per_tok, dim=-1)
    if config.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * config.routed_scaling_factor, chosen


class SparseMoE(nn.Module):
    """Routes each token to its top-k experts and sums their outputs by router weight.

    The router's softmax is taken over all experts in float32; with `norm_topk_prob` the
    k kept weights are renormalized to sum to one. The experts' weights are held by the
    scheme `config.expert_weights` names (`max.nn.expert_weights`: stacked float tensors,
    or gpt-oss's packed MXFP4), whose grouped kernel runs every expert of a step in two
    launches. Under tensor
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
        scheme = EXPERT_WEIGHTS.get(config.expert_weights)
        if scheme is None:
            raise ValueError(f"expert weights {config.expert_weights!r} are not supported ({', '.join(EXPERT_WEIGHTS)})")
        self.expert_weights = scheme()
        self.expert_weights.create(self, hidden_size, local, config.expert_bias)
        if config.num_shared_experts:
            self.shared_experts = GatedMLP(hidden_size, i * config.num_shared_experts, act)

    def checkpoint_layout(self) -> dict:
        """Where the checkpoint keeps the experts' weights (the scheme's layout)."""
        return self.expert_weights.checkpoint_layout(self)

    def fill_dummy(self, name: str, value: torch.Tensor, generator: torch.Generator) -> bool:
        """Random values for a packed parameter (True), or False for the loader's default."""
        return self.expert_weights.fill_dummy(name, value, generator)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 weights [T, k], int64 expert ids [T, k]) of each token's chosen experts:
        the router `gate` (an nn.Linear, whose product `max_kernels.moe_route` computes
        itself, fused with the top-k on the GPU for a few tokens) under `config.routing`."""
        c = self.config
        if c.grouped:
            return grouped_route(x, self.gate.weight, c)
        return max_kernels.moe_route(
            x, self.gate.weight, self.gate.bias, c.num_experts_per_tok, routing=c.routing, renormalize=c.norm_topk_prob
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.routed(x)
        if self.config.num_shared_experts:
            out = out + self.shared_experts(x)
        return out

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The routed experts' sum (without the shared ones)."""
        weights, chosen = self.route(x)
        single = self.tp.size == 1
        down_bias = self.experts_down_bias
        out = self.expert_weights.run(self, x, weights, chosen, down_bias if single else None)
        if single:
            return out
        out = all_reduce(out, self.tp)
        if down_bias is not None:
            # Each rank's partial sums lack the (unsplit) bias: add it once, by router weight.
            out = out + (weights.to(x.dtype)[..., None] * down_bias[chosen]).sum(dim=1)
        return out
