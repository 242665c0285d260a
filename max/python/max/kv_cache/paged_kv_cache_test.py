"""Paged KV cache bookkeeping: reservations, prefix matching, page tables, freeing."""

import pytest
import torch

from max.errors import MaxError
from max.kv_cache import KVCacheParams, PagedKVCache, kv_cache_dtype, page_hashes

PARAMS = KVCacheParams(num_layers=2, num_kv_heads=2, head_dim=4, page_size=4, dtype=torch.float32)


def test_pages_start_zeroed_and_have_layer_shapes():
    cache = PagedKVCache(PARAMS, 8, "cpu")
    k, v = cache.layer(1)
    assert k.shape == (8, 4, 2, 4) and v.shape == k.shape
    assert not k.any() and not v.any()


def test_reserve_grows_by_pages_and_fails_cleanly():
    cache = PagedKVCache(PARAMS, 3, "cpu")
    assert cache.reserve("a", 5) and len(cache.pages("a")) == 2
    assert cache.reserve("a", 8) and len(cache.pages("a")) == 2
    assert not cache.reserve("b", 5)  # needs 2 pages, 1 left
    assert cache.pages("b") == []
    cache.free("a")
    cache.free("b")
    assert cache.pool.num_in_use == 0


def test_prefix_match_reuses_full_pages_but_never_the_last_token():
    cache = PagedKVCache(PARAMS, 16, "cpu")
    prompt = list(range(10))
    assert cache.match_prefix("a", prompt) == 0
    assert cache.reserve("a", 10)
    cache.commit("a", prompt, 10)
    cache.free("a")
    # Same first 8 tokens: two full pages come back.
    assert cache.match_prefix("b", prompt[:8] + [99, 98]) == 8
    # A prompt that is exactly two pages long keeps its last page to compute.
    cache.free("b")
    assert cache.match_prefix("c", prompt[:8]) == 4
    cache.free("c")
    assert cache.pool.num_in_use == 0


def test_hashes_chain_over_the_whole_prefix():
    a = page_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, 2)
    b = page_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4, 2)
    assert a[1] != b[1]  # same second page, different history


def test_page_table_pads_with_valid_pages():
    cache = PagedKVCache(PARAMS, 8, "cpu")
    cache.reserve("a", 9)
    cache.reserve("b", 1)
    table = cache.page_table(["a", "b"])
    assert table.dtype == torch.int32 and table.shape == (2, 3)
    assert table[0].tolist() == cache.pages("a") and table[1, 0] == cache.pages("b")[0]
    assert table[1, 1:].tolist() == [0, 0]
    # A row freed and taken again by another request shows only valid page indices.
    cache.free("a")
    cache.reserve("c", 5)
    table = cache.page_table(["b", "c"])
    assert table[1, :2].tolist() == cache.pages("c")
    assert all(0 <= p < cache.num_pages for p in table.flatten().tolist())


def test_page_table_grows_past_its_initial_size():
    cache = PagedKVCache(PARAMS, 200, "cpu")
    for i in range(40):
        assert cache.reserve(f"r{i}", 4 * (i % 5 + 1))
    assert cache.reserve("r0", 4 * 30)
    table = cache.page_table([f"r{i}" for i in range(40)])
    assert table.shape == (40, 30)
    assert table[0].tolist() == cache.pages("r0")
    assert table[39, :5].tolist() == cache.pages("r39")


def test_budget_too_small_for_one_request_is_an_error():
    with pytest.raises(MaxError, match="one request of max length 100"):
        PARAMS.pages_for_budget(PARAMS.bytes_per_page * 3, max_length=100)
    assert PARAMS.pages_for_budget(PARAMS.bytes_per_page * 30, max_length=100) == 30


def test_hashes_continue_from_known_ones():
    tokens = list(range(20))
    assert page_hashes(tokens, 4, 5, known=page_hashes(tokens, 4, 2)) == page_hashes(tokens, 4, 5)


def test_fp8_cache_takes_one_byte_per_element_and_carries_unit_scales():
    dtype = kv_cache_dtype("fp8", torch.bfloat16)
    fp8 = KVCacheParams(num_layers=2, num_kv_heads=2, head_dim=4, page_size=4, dtype=dtype)
    assert fp8.dtype == torch.float8_e4m3fn
    assert PARAMS.bytes_per_page == 4 * fp8.bytes_per_page
    cache = PagedKVCache(fp8, 8, "cpu")
    k, v = cache.layer(1)
    assert k.dtype == v.dtype == torch.float8_e4m3fn
    assert not k.view(torch.uint8).any()  # zeroed codes are 0.0
    for scale in cache.layer_scales(1):
        assert scale.dtype == torch.float32 and scale.tolist() == [1.0]


def test_kv_cache_dtype_names():
    assert kv_cache_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert kv_cache_dtype("float32", torch.bfloat16) == torch.float32
    assert kv_cache_dtype("fp8_e4m3", torch.float32) == torch.float8_e4m3fn
    with pytest.raises(MaxError, match="unknown KV cache dtype"):
        kv_cache_dtype("int8", torch.float32)
