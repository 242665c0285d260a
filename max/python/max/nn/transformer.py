"""A pre-norm decoder-only transformer: the Llama / Qwen family, built from `DecoderConfig`.

Reads like the architecture: `Transformer` -> `DecoderLayer` -> `Attention` / `GatedMLP` /
`RMSNorm`. Inputs are the step's ragged tokens and their positions; where each request's
keys and values live comes from the step context (see `step_context`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from max.nn.attention import Attention
from max.nn.embedding import VocabParallelEmbedding, VocabParallelLMHead
from max.nn.mlp import GatedMLP
from max.nn.moe import MoEConfig, SparseMoE
from max.nn.norm import RMSNorm
from max.nn.rotary_embedding import RotaryEmbedding

FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass
class DecoderConfig:
    """Everything a Llama-family decoder needs, independent of any checkpoint format.

    `layer_types` marks each layer "full_attention" or "sliding_attention" (the latter
    attends only over the last `sliding_window` positions). `moe`, when set, replaces the
    dense MLP of the layers that `moe_layers` lists with routed experts. `attention_sinks`
    gives every attention head a learned sink logit (gpt-oss).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    rope_parameters: dict
    max_position_embeddings: int
    max_seq_len: int
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    attention_scale: float | None = None
    layer_types: list[str] = field(default_factory=list)
    sliding_window: int | None = None
    moe: MoEConfig | None = None
    moe_layers: list[int] = field(default_factory=list)
    final_logit_softcapping: float | None = None
    attention_sinks: bool = False

    def window(self, layer: int) -> int | None:
        """Sliding window of `layer`, or None for full attention."""
        if self.layer_types and self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None


class DecoderLayer(nn.Module):
    """Attention then feed-forward, each behind an RMSNorm and a residual connection."""

    # forward returns (output, residual), whose sum is the layer's hidden state.
    returns_residual_pair = True

    def __init__(self, config: DecoderConfig, index: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = Attention(
            index,
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            rotary,
            qkv_bias=config.qkv_bias,
            o_bias=config.o_bias,
            qk_norm=(lambda d: RMSNorm(d, config.norm_eps)) if config.qk_norm else None,
            scale=config.attention_scale,
            sliding_window=config.window(index),
            sinks=config.attention_sinks,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        if config.moe is not None and index in config.moe_layers:
            self.mlp = SparseMoE(config.hidden_size, config.moe, config.hidden_act)
        else:
            self.mlp = GatedMLP(
                config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias
            )

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block on the residual stream, which is carried as (block output, residual):
        their sum is the hidden state, and each norm adds the two as it normalizes."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Transformer(nn.Module):
    """Embedding, decoder layers, final norm and the language-model head.

    Architectures whose blocks differ (Gemma 3) subclass it and override the builders
    (`embedding`, `rotary_embedding`, `layer`, `final_norm`); the forward stays the same.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = self.embedding()
        self.rotary = self.rotary_embedding()
        self.layers = nn.ModuleList(self.layer(i) for i in range(config.num_layers))
        self.norm = self.final_norm()
        if not config.tie_word_embeddings:
            self.lm_head = VocabParallelLMHead(config.vocab_size, config.hidden_size)

    def embedding(self) -> nn.Module:
        """The token embedding."""
        return VocabParallelEmbedding(self.config.vocab_size, self.config.hidden_size)

    def rotary_embedding(self) -> nn.Module:
        """The rotary tables; one serves every layer."""
        c = self.config
        return RotaryEmbedding(c.head_dim, c.rope_parameters, c.max_position_embeddings, c.max_seq_len)

    def layer(self, index: int) -> nn.Module:
        """Decoder layer `index`."""
        return DecoderLayer(self.config, index, self.rotary)

    def final_norm(self) -> nn.Module:
        """The norm before the head."""
        return RMSNorm(self.config.hidden_size, self.config.norm_eps)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        logits_indices: torch.Tensor,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Float32 logits [N, vocab] for the rows `logits_indices` of the step's tokens.

        `embeds` (rows [R], vectors [R, hidden]) replaces the token embeddings of those rows:
        an image's placeholder tokens take its vision encoder's embeddings.
        """
        return self.logits(self.final_hidden(tokens, positions, logits_indices, embeds))

    def final_hidden(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        rows: torch.Tensor,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The hidden states after the final norm [len(rows), hidden] of the step's token
        rows `rows`: what the LM head reads, and what embedding models pool."""
        x, residual = self.embed_tokens(tokens), None
        if embeds is not None:
            x = x.index_copy(0, embeds[0], embeds[1].to(x.dtype))
        for layer in self.layers:
            x, residual = layer(x, residual, positions)
        # The norm is per row, so only the rows that are read are normalized.
        x, _ = self.norm(x[rows], residual[rows])
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head (tied to the embedding when the config says so), in float32, soft-capped
        (cap * tanh(logits / cap)) when the config sets `final_logit_softcapping`."""
        if self.config.tie_word_embeddings:
            logits = self.embed_tokens.logits(x).float()
        else:
            logits = self.lm_head(x).float()
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
