"""The paged KV cache: page tensors per layer, the page pool and the prefix cache."""

from max.kv_cache.kv_cache_params import KVCacheParams
from max.kv_cache.page_pool import PagePool
from max.kv_cache.paged_kv_cache import PagedKVCache, page_hashes

__all__ = ["KVCacheParams", "PagePool", "PagedKVCache", "page_hashes"]
