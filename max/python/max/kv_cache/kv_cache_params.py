"""The shape of a model's KV cache and how much memory a page of it takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from max.errors import MaxError

# `--kv-cache-dtype` names -> the cache's storage dtype; `auto` (None) is the model's
# compute dtype. `fp8` and `fp8_e4m3` (vLLM's names) store e4m3 codes with per-tensor
# scales (max_kernels.fp8_kv_cache).
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
}


def kv_cache_dtype(name: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The storage dtype that `--kv-cache-dtype name` gives a model computing in
    `compute_dtype`."""
    if name not in KV_CACHE_DTYPES:
        raise MaxError(f"unknown KV cache dtype {name!r} (choose from {', '.join(KV_CACHE_DTYPES)})")
    return KV_CACHE_DTYPES[name] or compute_dtype


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
