"""Server metrics in the Prometheus text format (`GET /metrics`).

Counters and histograms are updated by the HTTP process as requests come and go and as
tokens arrive; gauges of the engine (running and waiting requests, KV pages) come from the
statistics the engine sends with every step.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from max.pipelines.lib import EngineStats

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Histogram:
    """Cumulative-bucket histogram."""

    def __init__(self, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Records one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        """Prometheus lines of this histogram."""
        lines, running = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts):
            running += n
            le = "+Inf" if bound == math.inf else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{name}_sum {self.sum}")
        lines.append(f"{name}_count {self.count}")
        return lines


class ServerMetrics:
    """All metrics the server exports."""

    PREFIX = "max_serve"

    def __init__(self) -> None:
        self.requests_by_status: dict[int, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.time_to_first_token = Histogram()
        self.inter_token_latency = Histogram()
        self.request_latency = Histogram()
        self.engine: EngineStats | None = None
        self.in_flight = 0

    def request_finished(self, status: int) -> None:
        """Counts one answered API request by HTTP status."""
        self.requests_by_status[status] += 1

    def render(self) -> str:
        """The /metrics page."""
        p = self.PREFIX
        out = [
            f"# HELP {p}_requests_total API requests answered, by HTTP status.",
            f"# TYPE {p}_requests_total counter",
        ]
        for status in sorted(self.requests_by_status):
            out.append(f'{p}_requests_total{{status="{status}"}} {self.requests_by_status[status]}')
        for name, value, help_text in (
            ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens processed."),
            ("generation_tokens_total", self.generation_tokens, "Tokens generated."),
        ):
            out += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} counter", f"{p}_{name} {value}"]
        for name, hist, help_text in (
            ("time_to_first_token_seconds", self.time_to_first_token, "Time from request to first token."),
            ("inter_token_latency_seconds", self.inter_token_latency, "Time between tokens of a request."),
            ("request_latency_seconds", self.request_latency, "Time from request to its last token."),
        ):
            out += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} histogram", *hist.render(f"{p}_{name}")]
        stats = self.engine
        gauges = {
            "num_requests_running": (stats.num_running if stats else 0, "Requests in the running batch."),
            "num_requests_waiting": (stats.num_waiting if stats else 0, "Requests queued in the engine."),
            "num_requests_in_flight": (self.in_flight, "Requests the HTTP server is working on."),
            "kv_cache_pages_in_use": (stats.kv_pages_in_use if stats else 0, "KV cache pages held by requests."),
            "kv_cache_pages_total": (stats.kv_pages_total if stats else 0, "KV cache pages in all."),
            "kv_cache_pages_cached": (stats.kv_pages_cached if stats else 0, "Pages in the prefix cache."),
            "num_preemptions_total": (stats.num_preemptions if stats else 0, "Requests preempted."),
        }
        for name, (value, help_text) in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} {kind}", f"{p}_{name} {value}"]
        return "\n".join(out) + "\n"
