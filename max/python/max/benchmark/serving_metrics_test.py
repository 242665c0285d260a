"""The serving metrics: TTFT, TPOT, ITL and latency statistics on synthetic timings."""

import numpy as np
import pytest

from max.benchmark.serving_metrics import RequestResult, compute_metrics, format_report

RESULTS = [
    # ttft 0.1 s; 5 tokens in 0.5 s: TPOT (0.5 - 0.1) / 4 = 0.1 s.
    RequestResult(True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1, 0.1, 0.1, 0.1]),
    # ttft 0.3 s; 3 tokens in 0.7 s: TPOT 0.2 s.
    RequestResult(True, prompt_len=20, output_tokens=3, ttft=0.3, latency=0.7, itl=[0.25, 0.15]),
    # One token: a TTFT, no TPOT, no ITL.
    RequestResult(True, prompt_len=30, output_tokens=1, ttft=0.2, latency=0.2),
    RequestResult(False, prompt_len=40, error="HTTP 500"),
]


def test_counts_and_throughputs():
    m = compute_metrics(RESULTS, duration=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_input_tokens == 60 and m.total_output_tokens == 9  # failures count nothing
    assert m.request_throughput == pytest.approx(1.5)
    assert m.input_throughput == pytest.approx(30.0)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(34.5)


def test_ttft_tpot_itl_statistics_in_ms():
    m = compute_metrics(RESULTS, duration=2.0, percentiles=(50.0, 90.0, 99.0))
    assert m.ttft.mean == pytest.approx(200.0)
    assert m.ttft.median == pytest.approx(200.0)
    assert m.ttft.percentiles[99.0] == pytest.approx(np.percentile([100, 300, 200], 99))
    assert m.ttft.percentiles[99.0] == pytest.approx(298.0)  # linear between 200 and 300
    assert m.tpot.mean == pytest.approx(150.0)  # (100 + 200) / 2; the one-token request has none
    assert m.tpot.percentiles[50.0] == pytest.approx(150.0) == m.tpot.median
    gaps = [100, 100, 100, 100, 250, 150]
    assert m.itl.mean == pytest.approx(np.mean(gaps))
    assert m.itl.median == pytest.approx(100.0)
    assert m.itl.percentiles[90.0] == pytest.approx(np.percentile(gaps, 90))
    assert m.e2el.mean == pytest.approx(1400.0 / 3)
    assert m.ttft.std == pytest.approx(np.std([100, 200, 300]))


def test_no_success_gives_zeros():
    m = compute_metrics([RequestResult(False, error="x")], duration=1.0)
    assert m.completed == 0 and m.failed == 1
    assert m.ttft.mean == 0.0 and m.tpot.percentiles[99.0] == 0.0


def test_report_and_json():
    m = compute_metrics(RESULTS, duration=2.0)
    text = format_report(m)
    for label in ("Successful requests:", "Failed requests:", "Request throughput (req/s):",
                  "Output token throughput (tok/s):", "Mean TTFT (ms):", "Median TPOT (ms):", "P99 ITL (ms):"):
        assert label in text
    record = m.to_json()
    assert record["mean_ttft_ms"] == pytest.approx(200.0)
    assert record["p99_tpot_ms"] == pytest.approx(np.percentile([100, 200], 99))
    assert {"median_itl_ms", "std_e2el_ms", "output_throughput", "completed"} <= set(record)


def test_tokens_per_chunk_counts_merged_chunks():
    assert compute_metrics(RESULTS, duration=2.0).tokens_per_chunk == pytest.approx(1.0)  # 9 tokens, 9 chunks
    # 6 tokens in 3 chunks (the server sent waiting tokens together).
    merged = [RequestResult(True, prompt_len=10, output_tokens=6, ttft=0.1, latency=0.4, itl=[0.15, 0.15])]
    m = compute_metrics(merged, duration=1.0)
    assert m.tokens_per_chunk == pytest.approx(2.0)
    assert "Output tokens per chunk:" in format_report(m) and m.to_json()["tokens_per_chunk"] == 2.0
