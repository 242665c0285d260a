"""The EAGLE (v1) draft head, in the layout of the public checkpoints (Li et al., 2024).

EAGLE drafts at the feature level: for the token at position t it takes the target's last
hidden state f_t (after the target's final norm: what its LM head reads) and the embedding
of the next token x_{t+1}; `fc` projects [embed(x_{t+1}); f_t] to the head's width, and
decoder layers of the target's kind (the first one without its input norm: fc's output
goes straight in) predict f_{t+1}. The target's own LM head turns that into logits, and
the predicted feature feeds the next draft step in place of f.

Parameter names match the checkpoints: `fc.weight` (and `fc.bias` where trained with one),
`layers.N.*`, and `embed_tokens.weight` when the head ships its own embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from max.nn import DecoderLayer, RotaryEmbedding, VocabParallelEmbedding
from max.nn.linear import Linear
from max.pipelines.lib.speculative.eagle_config import EagleHeadConfig


class _NoInputNorm(nn.Module):
    """Stands in for the first layer's input norm, which EAGLE's heads do not have: the
    stream passes unchanged (and starts the residual)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return x
        x = x + residual
        return x, x


class EagleHead(nn.Module):
    """The EAGLE head (see the module docstring); layer i's keys and values go to layer i
    of the step context's KV cache (the head's own)."""

    def __init__(self, config: EagleHeadConfig) -> None:
        super().__init__()
        c = config.decoder
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size) if config.has_embedding else None
        self.fc = Linear(config.fc_in_features, c.hidden_size, bias=config.fc_bias)
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_parameters, c.max_position_embeddings, c.max_seq_len)
        self.layers = nn.ModuleList(DecoderLayer(c, i, self.rotary) for i in range(c.num_layers))
        self.layers[0].input_layernorm = _NoInputNorm()

    def share_embedding(self, embedding: nn.Module) -> None:
        """Uses the target's token embedding (heads shipped without their own)."""
        self.embed_tokens = embedding

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """EAGLE reads the target's feature as is (EAGLE-3 projects its three)."""
        return features

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """`tokens` [T] follow the positions whose features `hidden` [T, target hidden] holds
        (the target's, or the head's own output of the step before); returns the head's
        predicted features [T, H]."""
        if self.embed_tokens is None:
            raise RuntimeError("this EAGLE head has no token embedding: call share_embedding(target's)")
        x = self.fc(torch.cat([self.embed_tokens(tokens), hidden], dim=-1))
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, positions)
        return x + residual

    def logits(self, hidden: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Float32 logits [N, vocab] of output rows [N, H] through the target's `lm_head`
        (e.g. its `Transformer.logits`)."""
        return lm_head(hidden).float()

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """EAGLE drafts in the target's vocabulary: ids are unchanged."""
        return draft_ids
