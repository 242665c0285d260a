"""The shape of a model's KV cache and how much memory a page of it takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from max.errors import MaxError


@dataclass(frozen=True)
class KVCacheParams:
    """Per-model KV cache geometry: what a `PagedKVCache` allocates for each layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype

    @property
    def bytes_per_page(self) -> int:
        """Bytes of one page across all layers, keys and values."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.page_size * self.num_kv_heads * self.head_dim * element

    def pages_for_tokens(self, num_tokens: int) -> int:
        """Pages needed to hold `num_tokens` tokens of one request."""
        return -(-num_tokens // self.page_size)

    def pages_for_budget(self, budget_bytes: int, max_length: int) -> int:
        """How many pages fit in `budget_bytes`; at least one full-length request must fit."""
        pages = budget_bytes // self.bytes_per_page
        needed = self.pages_for_tokens(max_length)
        if pages < needed:
            need_mib = needed * self.bytes_per_page / 2**20
            raise MaxError(
                f"the KV cache budget ({budget_bytes / 2**20:.0f} MiB) holds {pages} pages of "
                f"{self.page_size} tokens, but one request of max length {max_length} needs "
                f"{needed} ({need_mib:.0f} MiB): raise --kv-cache-memory or lower --max-length"
            )
        return int(pages)
