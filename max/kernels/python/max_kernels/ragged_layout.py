"""How one step's ragged batch is laid out, as attention kernels read it.

A step runs the new tokens of several requests at once, concatenated into one flat tensor
(MAX's and vLLM's "ragged" batch). Requests that decode one token come first, then those
that prefill a chunk of their prompt. Each request's keys and values live in pages of the
paged KV cache, listed in its row of the page table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RaggedLayout:
    """Per-step attention metadata, built once per step and shared by every layer.

    Attributes:
        query_start: int32 [B + 1]; request b's new tokens are rows
            query_start[b]:query_start[b+1] of the flat token tensor.
        context_lens: int32 [B]; keys in the cache for request b once this step's tokens
            are written (cached prefix + new tokens).
        page_table: int32 [B, P]; request b's pages in order; unused entries hold any valid
            page index (they are never read past context_lens).
        slot_mapping: int64 [T]; flat cache slot (page * page_size + offset) of each new token.
        page_size: tokens per KV page.
        num_decode: how many leading requests have exactly one new token.
        query_lens: host copy of each request's number of new tokens.
        context_lens_host: host copy of context_lens (read by the reference path only; a
            CUDA-graph step, whose lengths change on the device, leaves it None).
        num_splits: how many parts the decode kernel cuts each context into (split-K);
            fixed per CUDA graph, since a graph replays a fixed grid.
        key_limit: optional int64 [T]: the last key position each new token may attend
            to, past its own where keys ahead of it are visible (Gemma 3's image tokens see
            their whole image); None: causal. Those keys must be in the cache already.
    """

    query_start: torch.Tensor
    context_lens: torch.Tensor
    page_table: torch.Tensor
    slot_mapping: torch.Tensor
    page_size: int
    num_decode: int
    query_lens: list[int]
    context_lens_host: list[int] | None
    num_splits: int = 1
    key_limit: torch.Tensor | None = None
    # Derived index tensors of the reference path, computed at most once per step.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_requests(self) -> int:
        """Requests in the step."""
        return len(self.query_lens)

    @property
    def max_query_len(self) -> int:
        """The longest request's number of new tokens."""
        return max(self.query_lens, default=0)

    @property
    def num_tokens(self) -> int:
        """New tokens in the step (rows of the flat tensor)."""
        return int(sum(self.query_lens))

    def cached(self, key, build):
        """Returns build() the first time `key` is asked for in this step, then the same."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]
