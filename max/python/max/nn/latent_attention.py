"""Multi-head latent attention (MLA, DeepSeek-V2) over the paged KV cache.

Keys and values are not cached per head: each token caches one compressed latent
(`kv_lora_rank` wide, RMS-normalized) and one rotary key shared by all heads
(`qk_rope_head_dim`). A token's cache row, latent then rotary key, is stored in two
halves: the first in the layer's key pages, the second in its value pages (the pool holds a
key and a value tensor per layer, here of one head each), so a token costs
kv_lora_rank + qk_rope_head_dim values per layer and nothing is padded.

Decode rows (one new token per request) attend with the up-projection absorbed, as the
DeepSeek-V2 paper describes: the query's non-rotary part is multiplied by W_UK (the key
rows of `kv_b_proj`), so scores are taken against the cached latent directly, and the
output latent is multiplied by W_UV (its value rows) before `o_proj`; no per-head key or
value is built (`max_kernels.mla_decode_attention`: a Triton kernel on CUDA, capture-safe,
so decode steps replay CUDA graphs). Prefill rows of an eager step expand their
requests' latents into per-head keys and values with `kv_b_proj` and attend in torch,
request by request, with host copies of the step's lengths (with a long chunk, the
per-head keys cost less than re-reading the latent per query). A step without host lengths
(a prefill replayed in a CUDA graph) runs every row absorbed through the decode kernel, as
a decode row over its request's tokens up to itself.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from max.errors import MaxError
from max.nn.linear import Linear
from max.nn.norm import RMSNorm
from max.nn.parallel import tensor_parallel
from max.nn.rotary_embedding import RotaryEmbedding
from max.nn.step_context import current_step
from max_kernels import mla_decode_attention, write_latent_rows
from max_kernels.paged_attention import gather_request_kv


def latent_cache_width(kv_lora_rank: int, qk_rope_head_dim: int) -> int:
    """Width of each of a layer's two cache tensors: half a token's latent row (rounded up)."""
    return -(-(kv_lora_rank + qk_rope_head_dim) // 2)


class LatentAttention(nn.Module):
    """MLA of one decoder layer (see the module docstring).

    Queries come from `q_proj`, or through a low-rank `q_a_proj` -> RMSNorm -> `q_b_proj`
    when `q_lora_rank` is set; each head's query is a part without position (`qk_nope_head_dim`)
    and a rotary part (`qk_rope_head_dim`). Rotary parts are in the "rotate half" layout (a
    checkpoint's interleaved pairs are reordered on load).
    """

    def __init__(
        self,
        layer_index: int,
        hidden_size: int,
        num_heads: int,
        *,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rotary: RotaryEmbedding,
        norm_eps: float,
        scale: float,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if tensor_parallel().size > 1:
            raise MaxError("multi-head latent attention does not support tensor parallelism yet")
        self.layer_index = layer_index
        self.num_heads = num_heads
        self.dims = (qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank)
        q_width = num_heads * (qk_nope_head_dim + qk_rope_head_dim)
        if q_lora_rank is None:
            self.q_proj = Linear(hidden_size, q_width, bias=False)
        else:
            self.q_a_proj = Linear(hidden_size, q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, norm_eps)
            self.q_b_proj = Linear(q_lora_rank, q_width, bias=False)
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, norm_eps)
        self.kv_b_proj = Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = Linear(num_heads * v_head_dim, hidden_size, bias=bias)
        self.rotary = rotary
        self.scale = scale

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] of the step's ragged tokens -> [T, hidden]."""
        nope, rope, v_dim, rank = self.dims
        t = x.shape[0]
        q = self._queries(x).view(t, self.num_heads, nope + rope)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split((rank, rope), dim=-1)
        q_pe, k_pe = self.rotary(q[..., nope:], k_pe.reshape(t, 1, rope), positions)
        row = torch.cat((self.kv_a_layernorm(latent), k_pe[:, 0]), dim=-1)
        step = current_step()
        layout = step.layout
        k_cache, v_cache = step.kv_cache.layer(self.layer_index)
        write_latent_rows(row, k_cache, v_cache, layout.slot_mapping)
        # Decode rows come first, one token each. Absorbing needs kv_b_proj's dense weight:
        # a weight-only quantized one (CPU) expands the latents for every row instead.
        nd = layout.num_decode if isinstance(self.kv_b_proj, nn.Linear) else 0
        if nd == t:
            out = self._decode(q[..., :nope], q_pe, k_cache, v_cache, layout.page_table, layout.context_lens, layout.num_splits)
        elif layout.context_lens_host is None and nd == layout.num_decode:
            out = self._decode_each_row(q[..., :nope], q_pe, k_cache, v_cache, layout)
        else:
            out = torch.empty(t, self.num_heads, v_dim, dtype=x.dtype, device=x.device)
            if nd > 0:
                out[:nd] = self._decode(
                    q[:nd, :, :nope], q_pe[:nd], k_cache, v_cache, layout.page_table[:nd], layout.context_lens[:nd],
                    layout.num_splits,
                )  # fmt: skip
            self._prefill(torch.cat((q[nd:, :, :nope], q_pe[nd:]), dim=-1), nd, k_cache, v_cache, layout, out)
        return self.o_proj(out.reshape(t, self.num_heads * v_dim))

    def _decode(self, q_nope, q_pe, k_cache, v_cache, page_table, context_lens, num_splits: int) -> torch.Tensor:
        """Absorbed attention of rows [R, H, *], row i being the last of context_lens[i]
        tokens on pages page_table[i] -> [R, H, v_head_dim] (split-K in `num_splits`)."""
        nope, _, _, rank = self.dims
        # kv_b_proj's rows are, per head, nope key rows (W_UK) then v_head_dim value rows (W_UV).
        w = self.kv_b_proj.weight.view(self.num_heads, -1, rank)
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w[:, :nope])
        o_latent = mla_decode_attention(
            torch.cat((q_latent, q_pe), dim=-1), k_cache, v_cache, page_table, context_lens, self.scale, rank,
            num_splits=num_splits,
        )  # fmt: skip
        return torch.einsum("thr,hvr->thv", o_latent, w[:, nope:])

    def _decode_each_row(self, q_nope, q_pe, k_cache, v_cache, layout) -> torch.Tensor:
        """A step without host lengths that prefills (a CUDA-graph prefill): every row
        attends absorbed as a decode row over its request's tokens up to itself, with no
        host synchronization. Rows past query_start[-1] (graph padding) see no tokens."""
        qs = layout.query_start
        rows = torch.arange(q_nope.shape[0], device=qs.device, dtype=qs.dtype)
        req = (torch.searchsorted(qs, rows, right=True) - 1).clamp(max=layout.num_requests - 1)
        seen = layout.context_lens[req] - (qs[req + 1] - rows) + 1
        context_lens = torch.where(rows < qs[-1], seen, 0).to(torch.int32)
        # Split-K buys nothing here: the rows alone fill the GPU.
        return self._decode(q_nope, q_pe, k_cache, v_cache, layout.page_table[req], context_lens, 1)

    def _prefill(self, q: torch.Tensor, r0: int, k_cache, v_cache, layout, out: torch.Tensor) -> None:
        """Attention of the rows q [Tp, H, nope + rope] of requests r0.. (all but the
        absorbed decode rows) into their rows of out, request by request over expanded
        latents."""
        if layout.context_lens_host is None:
            raise MaxError("latent attention with a weight-only quantized kv_b_proj needs the step's host lengths")
        # From the host lengths: reading query_start would wait for the GPU in every layer.
        starts = [0, *itertools.accumulate(layout.query_lens)]
        t0 = starts[r0]
        for b in range(r0, layout.num_requests):
            q0, q1 = starts[b], starts[b + 1]
            if q1 > q0:
                n = layout.context_lens_host[b]
                out[q0:q1] = self._attend(q[q0 - t0 : q1 - t0], k_cache, v_cache, layout.page_table[b], n)

    def _attend(self, q: torch.Tensor, k_cache, v_cache, pages: torch.Tensor, n: int) -> torch.Tensor:
        """Causal attention of one request's new queries [Tq, H, nope + rope] over its n
        cached tokens (the new ones last), after expanding their latents."""
        nope, rope, v_dim, rank = self.dims
        rows = torch.cat((gather_request_kv(k_cache, pages, n), gather_request_kv(v_cache, pages, n)), dim=-1)[:, 0]
        # Contiguous: the int8 weight-only product (max.nn.quantized_linear) reads its input
        # as a dense matrix.
        kv = self.kv_b_proj(rows[:, :rank].contiguous()).view(n, self.num_heads, nope + v_dim)
        k_pe = rows[:, None, rank : rank + rope].expand(n, self.num_heads, rope)
        k = torch.cat((kv[..., :nope], k_pe), dim=-1)
        scores = torch.einsum("qhd,khd->hqk", q, k).float() * self.scale
        tq = q.shape[0]
        # Query i sits at position n - tq + i and sees keys up to it.
        visible = torch.arange(n, device=q.device)[None, :] <= torch.arange(n - tq, n, device=q.device)[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1).to(q.dtype)
        return torch.einsum("hqk,khd->qhd", probs, kv[..., nope:])
