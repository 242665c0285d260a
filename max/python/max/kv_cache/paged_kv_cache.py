"""The paged KV cache: one key and one value tensor per layer, split into fixed-size pages.

Each layer's keys are a tensor [num_pages, page_size, num_kv_heads, head_dim] (values the
same), so an attention kernel reads any request's context through its row of the page
table. This class owns those tensors, the `PagePool`, and the list of pages of each
request; it builds the int32 page tables and slot mappings a step needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from max.kv_cache.kv_cache_params import KVCacheParams
from max.kv_cache.page_pool import PagePool

_ROOT_HASH = b"max-kv-prefix-root"


def page_hashes(
    tokens: Sequence[int], page_size: int, num_pages: int, known: Sequence[bytes] = ()
) -> list[bytes]:
    """Chained hashes of the first `num_pages` full pages of `tokens`.

    Page i's hash covers every token up to the end of page i, so equal hashes mean equal
    prefixes (and equal keys and values in the page). `known` are hashes of leading pages
    computed before; only the pages after them are hashed.
    """
    hashes = list(known[:num_pages])
    parent = hashes[-1] if hashes else _ROOT_HASH
    first = len(hashes)
    array = np.asarray(tokens[first * page_size : num_pages * page_size], dtype=np.int64)
    for i in range(num_pages - first):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(array[i * page_size : (i + 1) * page_size].tobytes())
        parent = h.digest()
        hashes.append(parent)
    return hashes


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeroed storage. Pages must start zeroed: attention reads (and masks) slots past a
    request's length, and masked garbage could still be NaN. On the CPU, numpy's calloc
    leaves the zeroing to the OS, page by page as memory is first touched."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


class PagedKVCache:
    """KV storage plus the page bookkeeping of every request that holds pages."""

    def __init__(
        self,
        params: KVCacheParams,
        num_pages: int,
        device: torch.device | str,
        enable_prefix_caching: bool = True,
    ) -> None:
        self.params = params
        self.device = torch.device(device)
        shape = (num_pages, params.page_size, params.num_kv_heads, params.head_dim)
        self.keys = [_zeros(shape, params.dtype, self.device) for _ in range(params.num_layers)]
        self.values = [_zeros(shape, params.dtype, self.device) for _ in range(params.num_layers)]
        self.pool = PagePool(num_pages, enable_prefix_caching)
        self._pages: dict[str, list[int]] = {}
        self._hashed: dict[str, list[bytes]] = {}

    @property
    def page_size(self) -> int:
        """Tokens per page."""
        return self.params.page_size

    @property
    def num_pages(self) -> int:
        """Pages in the cache."""
        return self.pool.num_pages

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value page tensors of layer `index`."""
        return self.keys[index], self.values[index]

    def pages(self, request_id: str) -> list[int]:
        """Pages held by a request, in token order."""
        return self._pages.get(request_id, [])

    def match_prefix(self, request_id: str, tokens: Sequence[int]) -> int:
        """Takes the cached pages of the longest known prefix of `tokens`.

        At least the last token is always left to compute (its logits are needed), and a
        page is shared only if every one of its tokens is before that last one.
        Returns the number of tokens whose keys and values are now in place.
        """
        assert request_id not in self._pages, f"request {request_id} already holds pages"
        full = (len(tokens) - 1) // self.page_size
        matched: list[int] = []
        hashes: list[bytes] = []
        if self.pool.enable_prefix_caching and full > 0:
            for h in page_hashes(tokens, self.page_size, full):
                page = self.pool.lookup(h)
                if page is None:
                    break
                self.pool.acquire(page)
                matched.append(page)
                hashes.append(h)
        self._pages[request_id] = matched
        self._hashed[request_id] = hashes
        return len(matched) * self.page_size

    def reserve(self, request_id: str, num_tokens: int) -> bool:
        """Makes the request's pages hold `num_tokens` tokens; False if pages ran out."""
        pages = self._pages.setdefault(request_id, [])
        self._hashed.setdefault(request_id, [])
        missing = self.params.pages_for_tokens(num_tokens) - len(pages)
        if missing <= 0:
            return True
        new = self.pool.allocate(missing)
        if new is None:
            return False
        pages.extend(new)
        return True

    def commit(self, request_id: str, tokens: Sequence[int], num_computed: int) -> None:
        """Indexes the request's pages that became full of computed tokens."""
        if not self.pool.enable_prefix_caching:
            return
        hashed = self._hashed[request_id]
        full = num_computed // self.page_size
        if full <= len(hashed):
            return
        pages = self._pages[request_id]
        all_hashes = page_hashes(tokens, self.page_size, full, known=hashed)
        for i in range(len(hashed), full):
            self.pool.register(pages[i], all_hashes[i])
        hashed[:] = all_hashes

    def free(self, request_id: str) -> None:
        """Returns all of a request's pages (finished, cancelled or preempted)."""
        pages = self._pages.pop(request_id, None)
        self._hashed.pop(request_id, None)
        if pages:
            self.pool.release(pages)

    def page_table(self, request_ids: Sequence[str], min_pages: int = 1) -> torch.Tensor:
        """int32 [B, P] of the requests' pages, padded with page 0 (never read)."""
        rows = [self._pages[r] for r in request_ids]
        width = max([min_pages, *(len(r) for r in rows)])
        table = np.zeros((len(rows), width), dtype=np.int32)
        for i, row in enumerate(rows):
            table[i, : len(row)] = row
        return torch.from_numpy(table)
