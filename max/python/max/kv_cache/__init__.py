"""The paged KV cache: page tensors per layer, the page pool and the prefix cache."""

from max.kv_cache.kv_cache_params import KV_CACHE_DTYPES, KVCacheParams, kv_cache_dtype
from max.kv_cache.page_pool import PagePool
from max.kv_cache.paged_kv_cache import PagedKVCache, page_hashes

__all__ = ["KV_CACHE_DTYPES", "KVCacheParams", "PagePool", "PagedKVCache", "kv_cache_dtype", "page_hashes"]
