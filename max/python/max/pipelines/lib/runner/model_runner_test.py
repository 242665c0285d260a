"""Which steps get CUDA graphs: the bucket sizes (the capture itself needs a GPU and is
covered by gpu_engine_test.py)."""

from max.pipelines.lib.runner.model_runner import (
    MAX_PREFILL_GRAPH_TOKENS,
    graph_batch_sizes,
    prefill_graph_sizes,
)


def test_decode_buckets_cover_every_batch_size_up_to_the_maximum():
    sizes = graph_batch_sizes(100)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 100
    assert all(b - a <= 16 for a, b in zip(sizes, sizes[1:]))


def test_prefill_buckets_pad_little_and_respect_the_budget():
    sizes = prefill_graph_sizes(8192)
    assert sizes[0] == 16 and sizes[-1] == MAX_PREFILL_GRAPH_TOKENS
    for n in range(1, MAX_PREFILL_GRAPH_TOKENS + 1):
        bucket = next(s for s in sizes if s >= n)
        assert bucket - n < (32 if n <= 256 else 64), (n, bucket)
    assert prefill_graph_sizes(200) == [16, 32, 64, 96, 128, 160, 192, 200]
    assert prefill_graph_sizes(0) == []
