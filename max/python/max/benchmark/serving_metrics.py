"""Serving metrics from per-request timings, as `vllm bench serve` reports them.

- TTFT: time from sending a request to its first streamed token.
- TPOT: per request, (latency - TTFT) / (output tokens - 1): the mean time per output
  token after the first (requests with one output token have none).
- ITL: every gap between two consecutive streamed chunks of a request, all requests pooled.
- E2EL: a request's whole latency.
Percentiles interpolate linearly between order statistics (numpy's default), so the p50
is the median.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RequestResult:
    """What one request measured (seconds)."""

    success: bool
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    sent_at: float = 0.0  # wall-clock time (time.time()) the request was sent, to line up with server logs


@dataclass
class LatencyStats:
    """Mean, median, standard deviation and chosen percentiles of one latency, in ms."""

    mean: float
    median: float
    std: float
    percentiles: dict[float, float]

    @classmethod
    def of(cls, seconds: list[float], percentiles: tuple[float, ...]) -> LatencyStats:
        """The statistics of `seconds` (all zero when empty)."""
        if not seconds:
            return cls(0.0, 0.0, 0.0, {p: 0.0 for p in percentiles})
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(
            float(ms.mean()),
            float(np.median(ms)),
            float(ms.std()),
            {p: float(np.percentile(ms, p)) for p in percentiles},
        )


@dataclass
class ServingMetrics:
    """A benchmark run's totals, throughputs and latency statistics."""

    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats
    # Output tokens per streamed chunk: above 1 when the server sent tokens that waited
    # together (then ITL is per chunk, not per token).
    tokens_per_chunk: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Flat fields in vLLM's result-file naming (mean_ttft_ms, p99_itl_ms, ...)."""
        out: dict[str, Any] = {
            "completed": self.completed,
            "failed": self.failed,
            "duration": self.duration,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "input_throughput": self.input_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "tokens_per_chunk": self.tokens_per_chunk,
        }
        for name in ("ttft", "tpot", "itl", "e2el"):
            stats: LatencyStats = getattr(self, name)
            out[f"mean_{name}_ms"] = stats.mean
            out[f"median_{name}_ms"] = stats.median
            out[f"std_{name}_ms"] = stats.std
            for p, value in stats.percentiles.items():
                out[f"p{p:g}_{name}_ms"] = value
        return out


def compute_metrics(
    results: list[RequestResult], duration: float, percentiles: tuple[float, ...] = (99.0,)
) -> ServingMetrics:
    """Aggregates per-request results of a run that took `duration` seconds."""
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [gap for r in ok for gap in r.itl]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    rate = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    chunks = sum(len(r.itl) + 1 for r in ok if r.output_tokens > 0)
    return ServingMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration=duration,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=rate(len(ok)),
        input_throughput=rate(input_tokens),
        output_throughput=rate(output_tokens),
        total_token_throughput=rate(input_tokens + output_tokens),
        ttft=LatencyStats.of(ttfts, percentiles),
        tpot=LatencyStats.of(tpots, percentiles),
        itl=LatencyStats.of(itls, percentiles),
        e2el=LatencyStats.of([r.latency for r in ok], percentiles),
        tokens_per_chunk=output_tokens / chunks if chunks else 0.0,
    )


def format_report(metrics: ServingMetrics, title: str = "Serving Benchmark Result") -> str:
    """The printed table."""
    width = 50
    lines = [f"{' ' + title + ' ':=^{width}}"]

    def row(label: str, value: Any) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<40}{text:>10}")

    row("Successful requests:", metrics.completed)
    row("Failed requests:", metrics.failed)
    row("Benchmark duration (s):", metrics.duration)
    row("Total input tokens:", metrics.total_input_tokens)
    row("Total generated tokens:", metrics.total_output_tokens)
    row("Request throughput (req/s):", metrics.request_throughput)
    row("Input token throughput (tok/s):", metrics.input_throughput)
    row("Output token throughput (tok/s):", metrics.output_throughput)
    row("Total token throughput (tok/s):", metrics.total_token_throughput)
    row("Output tokens per chunk:", metrics.tokens_per_chunk)
    sections = (
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2el", "End-to-end Latency"),
    )
    for name, heading in sections:
        stats: LatencyStats = getattr(metrics, name)
        lines.append(f"{heading:-^{width}}")
        upper = name.upper()
        row(f"Mean {upper} (ms):", stats.mean)
        row(f"Median {upper} (ms):", stats.median)
        for p, value in stats.percentiles.items():
            row(f"P{p:g} {upper} (ms):", value)
    lines.append("=" * width)
    return "\n".join(lines)
