"""Multi-head attention with grouped KV heads, over the paged KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.step_context import current_step
from max_kernels import paged_attention, write_kv_cache


class Attention(nn.Module):
    """Self-attention of one decoder layer.

    Projects the step's tokens to queries, keys and values, optionally normalizes q and k
    per head (Qwen3, Gemma 3), rotates them by position, appends k and v to this layer's
    pages of the KV cache and attends over each request's whole cached context.
    """

    def __init__(
        self,
        layer_index: int,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rotary: RotaryEmbedding,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: Callable[[int], nn.Module] | None = None,
        scale: float | None = None,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.q_norm = qk_norm(head_dim) if qk_norm else None
        self.k_norm = qk_norm(head_dim) if qk_norm else None
        self.rotary = rotary
        self.scale = scale if scale is not None else head_dim**-0.5
        self.sliding_window = sliding_window
        self.softcap = softcap

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] of the step's ragged tokens -> [T, hidden]."""
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, k, positions)
        step = current_step()
        k_cache, v_cache = step.kv_cache.layer(self.layer_index)
        write_kv_cache(k, v, k_cache, v_cache, step.layout)
        out = paged_attention(
            q, k_cache, v_cache, step.layout, self.scale, self.sliding_window, self.softcap
        )
        return self.o_proj(out.reshape(t, self.num_heads * self.head_dim))
