"""The EAGLE-3 draft head, in the layout of the public checkpoints (Li et al., 2025).

EAGLE-3 drafts from the target's features at three depths. For the token at position t it
takes the target's hidden states entering three layers (low, middle, high), concatenated,
and `fc` projects them to one vector g_t of the head's width. Its single decoder layer
(`midlayer`) then attends over the sequence with [norm(embed(x_{t+1})); norm(g_t)] (twice
the width) as the input of its q, k and v projections, g_t as the residual, and a SwiGLU
MLP. `norm` and `lm_head` turn the layer's output into logits over the head's own, smaller
vocabulary; `d2t[d]` is the offset from draft id d to its target id (d + d2t[d]), and
`t2d` marks the target ids the draft vocabulary covers.

The layer's output feeds the next draft step back in place of g (the head runs on its own
features past the first step), so `forward` takes the head-width vector and `fuse` makes
it from the target's three states.

Parameter names match the checkpoints (`fc.weight`, `midlayer.self_attn.q_proj.weight`,
`midlayer.hidden_norm.weight`, `norm.weight`, `lm_head.weight`, `d2t`, `t2d`); the
checkpoints of Llama-3.1 heads carry no `embed_tokens.weight` and share the target's.
"""

from __future__ import annotations

import torch
from torch import nn

from max.nn import Attention, GatedMLP, RMSNorm, RotaryEmbedding, VocabParallelEmbedding
from max.nn.linear import Linear
from max.nn.parallel import RowParallelLinear, tensor_parallel
from max.pipelines.lib.speculative.eagle_config import EagleHeadConfig


class WideInputAttention(Attention):
    """`Attention` whose q, k and v read `in_features` (EAGLE-3's [embedding; hidden], twice
    the width) while `o_proj` writes the residual stream's `out_features`."""

    def __init__(self, in_features: int, out_features: int, config: EagleHeadConfig, rotary: RotaryEmbedding) -> None:
        c = config.decoder
        super().__init__(0, in_features, c.num_heads, c.num_kv_heads, c.head_dim, rotary, qkv_bias=c.qkv_bias)
        # The base class sizes o_proj for its input width; the head's residual is narrower.
        self.o_proj = RowParallelLinear(self.num_heads * c.head_dim, out_features, False, tensor_parallel())


class Eagle3DecoderLayer(nn.Module):
    """EAGLE-3's `midlayer`: attention over [norm(embedding); norm(hidden)], then the MLP,
    each added to the residual stream (which starts as the hidden input)."""

    def __init__(self, config: EagleHeadConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        c = config.decoder
        h = c.hidden_size
        self.input_layernorm = RMSNorm(h, c.norm_eps)
        self.hidden_norm = RMSNorm(h, c.norm_eps)
        self.self_attn = WideInputAttention(2 * h, h, config, rotary)
        self.post_attention_layernorm = RMSNorm(h, c.norm_eps)
        self.mlp = GatedMLP(h, c.intermediate_size, c.hidden_act, c.mlp_bias)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """embeds, hidden [T, H] -> the layer's output [T, H] (residual stream)."""
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        x = self.self_attn(x, positions)
        x, residual = self.post_attention_layernorm(x, hidden)
        return self.mlp(x) + residual


class Eagle3Head(nn.Module):
    """The EAGLE-3 head (see the module docstring). Its layer's keys and values go to layer
    0 of the step context's KV cache (the head's own one-layer cache)."""

    def __init__(self, config: EagleHeadConfig) -> None:
        super().__init__()
        c = config.decoder
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(c.vocab_size, c.hidden_size) if config.has_embedding else None
        self.fc = Linear(config.fc_in_features, c.hidden_size, bias=config.fc_bias)
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_parameters, c.max_position_embeddings, c.max_seq_len)
        self.midlayer = Eagle3DecoderLayer(config, self.rotary)
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.lm_head = Linear(c.hidden_size, config.draft_vocab_size, bias=False)
        if config.has_vocab_map:
            self.d2t = nn.Parameter(torch.zeros(config.draft_vocab_size, dtype=torch.int64), requires_grad=False)
            self.t2d = nn.Parameter(torch.zeros(c.vocab_size, dtype=torch.bool), requires_grad=False)
        else:
            self.d2t = self.t2d = None

    def share_embedding(self, embedding: nn.Module) -> None:
        """Uses the target's token embedding (heads shipped without their own)."""
        self.embed_tokens = embedding

    def fuse(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """The target's hidden states entering the `aux_layers`, concatenated in that order
        [T, 3 * target hidden] -> g [T, H]."""
        return self.fc(aux_hidden)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One step of the head over the step's ragged tokens: `tokens` [T] are the tokens
        that follow the positions whose features `hidden` [T, H] holds (g from `fuse`, or
        the head's own output of the step before); returns the head's output [T, H]."""
        if self.embed_tokens is None:
            raise RuntimeError("this EAGLE-3 head has no token embedding: call share_embedding(target's)")
        return self.midlayer(self.embed_tokens(tokens), hidden, positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the draft vocabulary [N, draft vocab] of output rows [N, H]."""
        return self.lm_head(self.norm(hidden)).float()

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Target token ids of draft-vocabulary ids (d + d2t[d])."""
        if self.d2t is None:
            return draft_ids
        return draft_ids + self.d2t[draft_ids]
