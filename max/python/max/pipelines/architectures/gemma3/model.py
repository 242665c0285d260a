"""Gemma 3's network and pipeline model.

What is Gemma's own: embeddings scaled by sqrt(hidden_size); RMSNorm scaling by
(1 + weight); four norms per block (around attention and around the MLP); q/k norms; a
gelu-tanh gated MLP; two rotary tables (local and global layers); soft-capping of the
final logits when configured.
"""

from __future__ import annotations

import torch
from torch import nn

from max.nn import Attention, GatedMLP, GemmaRMSNorm, RotaryEmbedding, ScaledEmbedding, Transformer
from max.nn.transformer import FULL, SLIDING
from max.pipelines.lib import PipelineModel

from .model_config import Gemma3Config


class Gemma3DecoderLayer(nn.Module):
    """Attention and MLP, each normalized before and after, each with a residual."""

    returns_residual_pair = True

    def __init__(self, config: Gemma3Config, index: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.norm_eps
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = Attention(
            index,
            d,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            rotary,
            qkv_bias=config.qkv_bias,
            o_bias=config.o_bias,
            qk_norm=lambda dim: GemmaRMSNorm(dim, eps),
            scale=config.attention_scale,
            sliding_window=config.window(index),
        )
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = GatedMLP(d, config.intermediate_size, config.hidden_act)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `DecoderLayer.forward`: the hidden state travels as (output, residual)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(x, positions))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class Gemma3Transformer(Transformer):
    """The generic decoder with Gemma's embedding, rope tables, layers and norm."""

    def embedding(self) -> nn.Module:
        c = self.config
        return ScaledEmbedding(c.vocab_size, c.hidden_size, c.hidden_size**0.5)

    def rotary_embedding(self) -> nn.Module:
        c = self.config

        def table(params: dict) -> RotaryEmbedding:
            return RotaryEmbedding(c.head_dim, params, c.max_position_embeddings, c.max_seq_len)

        return nn.ModuleDict({FULL: table(c.rope_parameters), SLIDING: table(c.local_rope_parameters)})

    def layer(self, index: int) -> nn.Module:
        return Gemma3DecoderLayer(self.config, index, self.rotary[self.config.layer_types[index]])

    def final_norm(self) -> nn.Module:
        return GemmaRMSNorm(self.config.hidden_size, self.config.norm_eps)


class Gemma3Model(PipelineModel):
    """Runs `Gemma3ForCausalLM` checkpoints."""

    config_class = Gemma3Config

    def build_network(self) -> nn.Module:
        return Gemma3Transformer(self.model_config)
