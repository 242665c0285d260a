"""Gemma 3's network and pipeline model.

What is Gemma's own: embeddings scaled by sqrt(hidden_size); RMSNorm scaling by
(1 + weight); four norms per block (around attention and around the MLP); q/k norms; a
gelu-tanh gated MLP; two rotary tables (local and global layers); soft-capping of the
final logits when configured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from max.nn import Attention, GatedMLP, GemmaRMSNorm, RotaryEmbedding, ScaledEmbedding
from max.nn.transformer import SLIDING
from max.pipelines.lib import PipelineModel

from .model_config import Gemma3Config


class Gemma3DecoderLayer(nn.Module):
    """Attention and MLP, each normalized before and after, each with a residual."""

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

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Transformer(nn.Module):
    """Scaled embedding, Gemma 3 layers, final norm, (tied) head with optional soft-cap."""

    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = ScaledEmbedding(config.vocab_size, config.hidden_size, config.hidden_size**0.5)

        def rotary(params: dict) -> RotaryEmbedding:
            return RotaryEmbedding(config.head_dim, params, config.max_position_embeddings, config.max_seq_len)

        self.rotary_global = rotary(config.rope_parameters)
        self.rotary_local = rotary(config.local_rope_parameters)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(
                config,
                i,
                self.rotary_local if config.layer_types[i] == SLIDING else self.rotary_global,
            )
            for i in range(config.num_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.norm_eps)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, logits_indices: torch.Tensor
    ) -> torch.Tensor:
        """Float32 logits [N, vocab] for the rows `logits_indices` of the step's tokens."""
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, positions)
        x = self.norm(x[logits_indices])
        weight = self.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(x, weight).float()
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


class Gemma3Model(PipelineModel):
    """Runs `Gemma3ForCausalLM` checkpoints."""

    config_class = Gemma3Config

    def build_network(self) -> nn.Module:
        return Gemma3Transformer(self.model_config)
