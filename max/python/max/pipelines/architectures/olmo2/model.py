"""OLMo 2's network and pipeline model: each block normalizes the outputs of attention and
of the MLP (not their inputs) before adding them to the residual stream."""

from __future__ import annotations

import torch
from torch import nn

from max.nn import Attention, GatedMLP, RMSNorm, RotaryEmbedding, Transformer
from max.pipelines.lib import PipelineModel

from .model_config import Olmo2Config


class Olmo2DecoderLayer(nn.Module):
    """h += norm(attention(h)); h += norm(mlp(h))."""

    returns_residual_pair = True

    def __init__(self, config: Olmo2Config, index: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        d, eps, bias = config.hidden_size, config.norm_eps, config.qkv_bias
        self.self_attn = Attention(
            index, d, config.num_heads, config.num_kv_heads, config.head_dim, rotary, qkv_bias=bias, o_bias=bias,
            qk_norm=lambda width: RMSNorm(width, eps), qk_norm_per_head=False,
        )  # fmt: skip
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = GatedMLP(d, config.intermediate_size, config.hidden_act)
        self.post_feedforward_layernorm = RMSNorm(d, eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `DecoderLayer.forward`: the hidden state travels as (output, residual)."""
        h = x if residual is None else x + residual
        h = h + self.post_attention_layernorm(self.self_attn(h, positions))
        return self.post_feedforward_layernorm(self.mlp(h)), h


class Olmo2Transformer(Transformer):
    """The generic decoder with OLMo 2's blocks."""

    def layer(self, index: int) -> nn.Module:
        return Olmo2DecoderLayer(self.config, index, self.rotary)


class Olmo2Model(PipelineModel):
    """Runs `Olmo2ForCausalLM` checkpoints."""

    config_class = Olmo2Config

    def build_network(self) -> nn.Module:
        return Olmo2Transformer(self.model_config)
