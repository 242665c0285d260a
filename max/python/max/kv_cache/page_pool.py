"""The pool of KV cache pages: reference counts, free lists and the prefix-cache index.

A page is *in use* while some request holds it (reference count > 0). When the last holder
lets go, a page whose contents are known (it was full and hashed) stays in the prefix index
as *cached*: a later request with the same prefix can take it back. Cached pages are
evicted least-recently-freed first when free pages run out.
"""

from __future__ import annotations

from collections import OrderedDict


class PagePool:
    """Hands out page indices [0, num_pages) and tracks who holds them."""

    def __init__(self, num_pages: int, enable_prefix_caching: bool = True) -> None:
        self.num_pages = num_pages
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: low indices first
        self._cached_free: OrderedDict[int, None] = OrderedDict()
        self._hash_to_page: dict[bytes, int] = {}
        self._page_hash: list[bytes | None] = [None] * num_pages
        self._in_use = 0

    @property
    def num_in_use(self) -> int:
        """Pages held by at least one request."""
        return self._in_use

    @property
    def num_available(self) -> int:
        """Pages that an allocation may take: free ones plus evictable cached ones."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_cached(self) -> int:
        """Pages in the prefix index (held or not)."""
        return len(self._hash_to_page)

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh pages, or None (and nothing taken) if not enough are available."""
        if count > self.num_available:
            return None
        pages = []
        for _ in range(count):
            if self._free:
                page = self._free.pop()
            else:
                page, _ = self._cached_free.popitem(last=False)  # evict the oldest
                del self._hash_to_page[self._page_hash[page]]
                self._page_hash[page] = None
            self._take(page)
            pages.append(page)
        return pages

    def lookup(self, page_hash: bytes) -> int | None:
        """The cached page holding the prefix that `page_hash` names, if any."""
        if not self.enable_prefix_caching:
            return None
        return self._hash_to_page.get(page_hash)

    def acquire(self, page: int) -> None:
        """Adds a holder to a cached page found by `lookup`."""
        if self._ref_counts[page] == 0:
            self._cached_free.pop(page, None)
        self._take(page)

    def register(self, page: int, page_hash: bytes) -> None:
        """Records that a full, held page holds the prefix `page_hash`."""
        if not self.enable_prefix_caching or self._page_hash[page] is not None:
            return
        if page_hash in self._hash_to_page:
            return  # another page already holds the same prefix; keep the first
        self._hash_to_page[page_hash] = page
        self._page_hash[page] = page_hash

    def release(self, pages: list[int]) -> None:
        """Drops one holder from each page; unheld pages become free or cached."""
        for page in pages:
            count = self._ref_counts[page] - 1
            assert count >= 0, f"page {page} released more often than taken"
            self._ref_counts[page] = count
            if count == 0:
                self._in_use -= 1
                if self._page_hash[page] is not None:
                    self._cached_free[page] = None
                else:
                    self._free.append(page)

    def reset_prefix_cache(self) -> int:
        """Forgets the contents of every cached page no request holds (they become free);
        returns how many. Benchmarks call it after their warm-up, whose prompts would
        otherwise be prefix hits for the measured requests."""
        for page in self._cached_free:
            del self._hash_to_page[self._page_hash[page]]
            self._page_hash[page] = None
            self._free.append(page)
        count = len(self._cached_free)
        self._cached_free.clear()
        return count

    def _take(self, page: int) -> None:
        if self._ref_counts[page] == 0:
            self._in_use += 1
        self._ref_counts[page] += 1
