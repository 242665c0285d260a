"""The paged KV cache: one key and one value tensor per layer, split into fixed-size pages.

Each layer's keys are a tensor [num_pages, page_size, num_kv_heads, head_dim] (values the
same), so an attention kernel reads any request's context through its row of the page
table. This class owns those tensors, the `PagePool`, and the list of pages of each
request; it builds the int32 page tables and slot mappings a step needs.

An FP8 cache (`KVCacheParams.dtype` float8_e4m3fn, `--kv-cache-dtype fp8`) stores one byte
per element; each layer's keys and values then have a float32 scale (vLLM's per-tensor
k_scale / v_scale, 1.0 until checkpoint scales are loaded), which attention reads.
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


def _ones_scale(device: torch.device) -> torch.Tensor:
    """A per-tensor scale of 1.0 (vLLM's default when a checkpoint gives none)."""
    return torch.ones(1, dtype=torch.float32, device=device)


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
        # One float32 [1] tensor per layer: kernels load the scale from the device (a CUDA
        # graph replays with whatever it holds), and separate tensors keep every pointer
        # aligned alike (one compiled kernel variant for all layers).
        self.k_scales = [_ones_scale(self.device) for _ in range(params.num_layers)]
        self.v_scales = [_ones_scale(self.device) for _ in range(params.num_layers)]
        self.pool = PagePool(num_pages, enable_prefix_caching)
        self._pages: dict[str, list[int]] = {}
        self._hashed: dict[str, list[bytes]] = {}
        # Every request's pages also sit in a row of one int32 table, so a step's page table
        # is a single fancy-indexing of it rather than a Python loop over requests.
        self._table = np.zeros((16, 16), dtype=np.int32)
        self._row: dict[str, int] = {}
        self._free_rows: list[int] = list(range(15, -1, -1))

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

    def layer_scales(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [1] key and value scales of layer `index` (read for an FP8 cache only)."""
        return self.k_scales[index], self.v_scales[index]

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
        self._write_row(request_id, 0, matched)
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
        self._write_row(request_id, len(pages), new)
        pages.extend(new)
        return True

    def commit(self, request_id: str, tokens: Sequence[int], num_computed: int) -> None:
        """Indexes the request's pages that became full of computed tokens."""
        if not self.pool.enable_prefix_caching or request_id not in self._hashed:
            return  # nothing to index, or the request let go of its pages already
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
        row = self._row.pop(request_id, None)
        if row is not None:
            self._free_rows.append(row)
        if pages:
            self.pool.release(pages)

    def page_table_array(self, request_ids: Sequence[str], min_pages: int = 1) -> np.ndarray:
        """int32 [B, P] of the requests' pages (P: the most any of them holds); entries past
        a request's pages hold some valid page index, which attention never reads."""
        rows = [self._row[r] for r in request_ids]
        width = max([min_pages, *(len(self._pages[r]) for r in request_ids)])
        if width > self._table.shape[1]:
            self._grow(self._table.shape[0], width)
        return self._table[rows, :width]

    def page_table(self, request_ids: Sequence[str], min_pages: int = 1) -> torch.Tensor:
        """`page_table_array` as a CPU tensor."""
        return torch.from_numpy(self.page_table_array(request_ids, min_pages))

    def _write_row(self, request_id: str, start: int, pages: Sequence[int]) -> None:
        """Puts `pages` at columns start.. of the request's table row (taking a row if new)."""
        row = self._row.get(request_id)
        if row is None:
            if not self._free_rows:
                grown = self._table.shape[0]
                self._grow(2 * grown, self._table.shape[1])
                self._free_rows = list(range(2 * grown - 1, grown - 1, -1))
            row = self._row[request_id] = self._free_rows.pop()
        end = start + len(pages)
        if end > self._table.shape[1]:
            self._grow(self._table.shape[0], max(end, 2 * self._table.shape[1]))
        # Columns past the request's pages keep stale entries: padding that is never read.
        self._table[row, start:end] = pages

    def _grow(self, rows: int, cols: int) -> None:
        table = np.zeros((rows, cols), dtype=np.int32)
        table[: self._table.shape[0], : self._table.shape[1]] = self._table
        self._table = table
