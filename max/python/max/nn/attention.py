"""Multi-head attention with grouped KV heads, over the paged KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from max.nn.checkpoint_layout import Concat
from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.step_context import current_step
from max_kernels import paged_attention, rope_and_write_kv


class Attention(nn.Module):
    """Self-attention of one decoder layer.

    Projects the step's tokens to queries, keys and values (one fused `qkv_proj`, filled
    from the checkpoint's q_proj, k_proj and v_proj), optionally normalizes q and k per
    head (Qwen3, Gemma 3), rotates them by position while appending k and v to this
    layer's pages of the KV cache, and attends over each request's whole cached context.
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
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(hidden_size, q_size + 2 * kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, hidden_size, bias=o_bias)
        self.q_norm = qk_norm(head_dim) if qk_norm else None
        self.k_norm = qk_norm(head_dim) if qk_norm else None
        self.rotary = rotary
        self.scale = scale if scale is not None else head_dim**-0.5
        self.sliding_window = sliding_window
        self.softcap = softcap

    def checkpoint_layout(self) -> dict:
        """qkv_proj is q_proj, k_proj and v_proj, stacked."""
        names = ("q_proj", "k_proj", "v_proj")
        layout = {"qkv_proj.weight": Concat(tuple(f"{n}.weight" for n in names))}
        if self.qkv_proj.bias is not None:
            layout["qkv_proj.bias"] = Concat(tuple(f"{n}.bias" for n in names))
        return layout

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] of the step's ragged tokens -> [T, hidden]."""
        t, d = x.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split(self.split_sizes, dim=-1)
        q = q.view(t, self.num_heads, d)
        k = k.view(t, self.num_kv_heads, d)
        v = v.view(t, self.num_kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        step = current_step()
        k_cache, v_cache = step.kv_cache.layer(self.layer_index)
        q = rope_and_write_kv(
            q, k, v, positions, self.rotary.cos, self.rotary.sin, k_cache, v_cache, step.layout.slot_mapping
        )
        out = paged_attention(
            q, k_cache, v_cache, step.layout, self.scale, self.sliding_window, self.softcap
        )
        return self.o_proj(out.reshape(t, self.num_heads * d))
