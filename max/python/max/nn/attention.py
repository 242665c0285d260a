"""Multi-head attention with grouped KV heads, over the paged KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from max.errors import MaxError
from max.nn.checkpoint_layout import Concat, whole_or_shard
from max.nn.linear import Linear
from max.nn.norm import GemmaRMSNorm, RMSNorm
from max.nn.parallel import RowParallelLinear, tensor_parallel
from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.sharded_norm import rms_norm_across_ranks
from max.nn.step_context import current_step
from max_kernels import paged_attention, rms_norm_qk, rope_and_write_kv


class Attention(nn.Module):
    """Self-attention of one decoder layer.

    Projects the step's tokens to queries, keys and values (one fused `qkv_proj`, filled
    from the checkpoint's q_proj, k_proj and v_proj), optionally normalizes q and k per
    head (Qwen3, Gemma 3) or over the whole projection (`qk_norm_per_head=False`: OLMo 2),
    rotates them by position while appending k and v to this
    layer's pages of the KV cache, and attends over each request's whole cached context.
    With `sinks` (gpt-oss) each head has a learned logit that joins its softmax's
    denominator, so a head can attend to "nothing". Under tensor parallelism a rank holds a
    slice of the query heads (and their sinks) and the KV heads they read; `o_proj` sums
    the ranks' outputs; norms over the whole projection hold the rank's slice of their
    weight and take their statistic across the ranks (`rms_norm_across_ranks`).
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
        qk_norm_per_head: bool = True,
        scale: float | None = None,
        sliding_window: int | None = None,
        softcap: float | None = None,
        sinks: bool = False,
    ) -> None:
        super().__init__()
        tp = tensor_parallel()
        self.layer_index = layer_index
        self.head_dim = head_dim
        self.total_heads = (num_heads, num_kv_heads)
        self.q_heads = tp.split(num_heads, "the number of attention heads")
        self.kv_heads = tp.kv_heads(num_kv_heads)
        self.num_heads = self.q_heads[1] - self.q_heads[0]  # on this rank
        self.num_kv_heads = self.kv_heads[1] - self.kv_heads[0]
        q_size, kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.qkv_proj = Linear(hidden_size, q_size + 2 * kv_size, bias=qkv_bias)
        self.o_proj = RowParallelLinear(q_size, hidden_size, o_bias, tp)
        self.tp = tp
        self.qk_norm_per_head = qk_norm_per_head
        self.q_norm = qk_norm(head_dim if qk_norm_per_head else q_size) if qk_norm else None
        self.k_norm = qk_norm(head_dim if qk_norm_per_head else kv_size) if qk_norm else None
        if tp.size > 1 and qk_norm and not qk_norm_per_head and not isinstance(self.q_norm, RMSNorm):
            # Only an RMSNorm's statistic is a sum that the ranks can add up.
            name = type(self.q_norm).__name__
            raise MaxError(f"whole-projection q/k norms must be RMSNorms under tensor parallelism, not {name}")
        self.rotary = rotary
        self.scale = scale if scale is not None else head_dim**-0.5
        self.sliding_window = sliding_window
        self.softcap = softcap
        self.sinks = nn.Parameter(torch.empty(self.num_heads)) if sinks else None

    def checkpoint_layout(self) -> dict:
        """qkv_proj is this rank's rows of q_proj, k_proj and v_proj, stacked; o_proj its
        columns of o_proj; sinks its query heads' entries; whole-projection q/k norms the
        entries of its q and k columns."""
        d = self.head_dim
        hq, hkv = self.total_heads
        rows = {
            "q_proj": ((self.q_heads[0] * d, self.q_heads[1] * d), hq * d),
            "k_proj": ((self.kv_heads[0] * d, self.kv_heads[1] * d), hkv * d),
            "v_proj": ((self.kv_heads[0] * d, self.kv_heads[1] * d), hkv * d),
        }

        def parts(kind: str) -> Concat:
            return Concat(tuple(whole_or_shard(f"{n}.{kind}", 0, b, full) for n, (b, full) in rows.items()))

        layout = {
            "qkv_proj.weight": parts("weight"),
            "o_proj.weight": whole_or_shard("o_proj.weight", 1, *rows["q_proj"]),
        }
        if self.qkv_proj.bias is not None:
            layout["qkv_proj.bias"] = parts("bias")
        if self.sinks is not None:
            layout["sinks"] = whole_or_shard("sinks", 0, self.q_heads, hq)
        if self.q_norm is not None and not self.qk_norm_per_head:
            layout["q_norm.weight"] = whole_or_shard("q_norm.weight", 0, *rows["q_proj"])
            layout["k_norm.weight"] = whole_or_shard("k_norm.weight", 0, *rows["k_proj"])
        return layout

    def _norm_heads(self, qkv: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-head q and k norms (Qwen3, Gemma 3). Two RMSNorms of one kind and eps run
        as one `rms_norm_qk` over the projection's q and k heads (one launch on CUDA, where
        two would cost a launch each per layer; the same two references elsewhere); other
        norm modules run as they are."""
        qn, kn = self.q_norm, self.k_norm
        # Exactly these classes: a subclass may compute something else in its forward.
        fused = type(qn) is type(kn) and type(qn) in (RMSNorm, GemmaRMSNorm) and qn.eps == kn.eps
        if not fused:
            return qn(q), kn(k)
        heads = self.num_heads + self.num_kv_heads
        qk = qkv[:, : heads * self.head_dim].unflatten(-1, (heads, self.head_dim))
        normed = rms_norm_qk(qk, qn.weight, kn.weight, self.num_heads, qn.eps, gemma=qn.gemma)
        return normed[:, : self.num_heads], normed[:, self.num_heads :]

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] of the step's ragged tokens -> [T, hidden]."""
        t, d = x.shape[0], self.head_dim
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = rms_norm_across_ranks((q, k), (self.q_norm, self.k_norm), self.tp)
        q = q.view(t, self.num_heads, d)
        k = k.view(t, self.num_kv_heads, d)
        v = v.view(t, self.num_kv_heads, d)
        if self.q_norm is not None and self.qk_norm_per_head:
            q, k = self._norm_heads(qkv, q, k)
        step = current_step()
        k_cache, v_cache = step.kv_cache.layer(self.layer_index)
        # Per-tensor scales, which the kernels read only when the cache holds FP8 codes.
        scales = step.kv_cache.layer_scales(self.layer_index)
        rows, cos, sin = self.rotary.step_tables(positions)
        q = rope_and_write_kv(
            q, k, v, rows, cos, sin, k_cache, v_cache, step.layout.slot_mapping,
            k_scale=scales[0], v_scale=scales[1], layout=step.layout,
        )  # fmt: skip
        out = paged_attention(
            q, k_cache, v_cache, step.layout, self.scale, self.sliding_window, self.softcap, self.sinks,
            k_scale=scales[0], v_scale=scales[1],
        )  # fmt: skip
        return self.o_proj(out.reshape(t, self.num_heads * d))
