"""Page pool: allocation, reference counts, the prefix index and eviction."""

from max.kv_cache.page_pool import PagePool


def test_allocate_and_release_return_pages():
    pool = PagePool(4)
    pages = pool.allocate(3)
    assert sorted(pages) == [0, 1, 2] and pool.num_in_use == 3
    assert pool.allocate(2) is None  # all or nothing
    assert pool.num_in_use == 3
    pool.release(pages)
    assert pool.num_in_use == 0 and pool.num_available == 4


def test_cached_pages_are_reused_then_evicted_oldest_first():
    pool = PagePool(2)
    a, b = pool.allocate(2)
    pool.register(a, b"A")
    pool.register(b, b"B")
    pool.release([a])
    pool.release([b])
    assert pool.num_in_use == 0 and pool.num_cached == 2
    # A lookup takes a cached page back.
    assert pool.lookup(b"B") == b
    pool.acquire(b)
    assert pool.num_in_use == 1
    # Allocation evicts the least recently freed cached page (a), dropping its hash.
    (c,) = pool.allocate(1)
    assert c == a and pool.lookup(b"A") is None
    pool.release([b, c])
    assert pool.num_in_use == 0


def test_shared_page_stays_until_last_holder_releases():
    pool = PagePool(3)
    (p,) = pool.allocate(1)
    pool.register(p, b"P")
    pool.acquire(pool.lookup(b"P"))
    pool.release([p])
    assert pool.num_in_use == 1
    pool.release([p])
    assert pool.num_in_use == 0


def test_prefix_caching_off_never_matches():
    pool = PagePool(2, enable_prefix_caching=False)
    (p,) = pool.allocate(1)
    pool.register(p, b"P")
    assert pool.lookup(b"P") is None


def test_reset_prefix_cache_forgets_unheld_pages_only():
    pool = PagePool(3)
    a, b = pool.allocate(2)
    pool.register(a, b"A")
    pool.register(b, b"B")
    pool.release([a])  # a: cached, unheld; b: still held
    assert pool.reset_prefix_cache() == 1
    assert pool.lookup(b"A") is None and pool.lookup(b"B") == b
    assert pool.num_available == 2 and pool.num_cached == 1
    assert sorted(pool.allocate(2)) == sorted({0, 1, 2} - {b})
