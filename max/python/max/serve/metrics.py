"""Server metrics in the Prometheus text format (`GET /metrics`).

Counters and histograms are updated by the HTTP process as requests come and go and as
tokens arrive; gauges of the engine (running and waiting requests, KV pages) come from the
statistics the engine sends with every step (and, before the first step, from what it
reported when it became ready). Engine restarts and whether each engine is up come from the
supervisor; API errors are counted by their `code` (e.g. `queue_full`, `request_too_large`).
The same page carries vLLM's metric names (`VllmMetrics`, through prometheus_client), and
with `--enable-lora` the LoRA series (`lora_metrics`).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from max.pipelines.lib import EngineStats
from max.serve.lora_metrics import lora_families

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
        # Data-parallel replicas' own stats (None with one engine): gauges get a replica label.
        self.replicas: list[EngineStats | None] | None = None
        self.replica_requests: list[int] | None = None  # requests each replica was given
        self.in_flight = 0
        self.errors_by_code: dict[str, int] = defaultdict(int)
        self.engine_restarts: list[int] = [0]  # per replica (one entry for a single engine)
        self.engine_up: list[bool] = [True]
        # Each engine's start-up memory report (bytes by component; empty until ready).
        self.memory: list[dict[str, int]] = [{}]
        self.vllm = VllmMetrics()  # the same events under vLLM's names

    def read_engine(self, engine) -> None:
        """Takes the engine's (or the data-parallel pool's) current gauges and counters."""
        self.engine = engine.stats
        self.replicas = getattr(engine, "replica_stats", None)
        self.replica_requests = getattr(engine, "requests_routed", None)
        engines = getattr(engine, "replicas", None) or [engine]
        self.engine_restarts = [getattr(e, "restarts", 0) for e in engines]
        self.engine_up = [e.alive for e in engines]
        self.memory = [dict(getattr(getattr(e, "ready", None), "memory", None) or {}) for e in engines]

    def error_answered(self, code: str | None) -> None:
        """Counts one error answer by its OpenAI error code."""
        self.errors_by_code[code or "none"] += 1

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
        out += [f"# HELP {p}_num_requests_in_flight Requests the HTTP server is working on."]
        out += [f"# TYPE {p}_num_requests_in_flight gauge", f"{p}_num_requests_in_flight {self.in_flight}"]
        engine_gauges = {
            "num_requests_running": ("num_running", "Requests in the running batch."),
            "num_requests_waiting": ("num_waiting", "Requests queued in the engine."),
            "kv_cache_pages_in_use": ("kv_pages_in_use", "KV cache pages held by requests."),
            "kv_cache_pages_capacity": ("kv_pages_total", "KV cache pages in all."),
            "kv_cache_pages_cached": ("kv_pages_cached", "Pages in the prefix cache."),
            "num_preemptions_total": ("num_preemptions", "Requests preempted."),
        }
        # One series per data-parallel replica, or one unlabeled series for a single engine.
        series = (
            [(f'{{replica="{i}"}}', s) for i, s in enumerate(self.replicas)]
            if self.replicas is not None
            else [("", self.engine)]
        )
        for name, (field_name, help_text) in engine_gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            out += [f"# HELP {p}_{name} {help_text}", f"# TYPE {p}_{name} {kind}"]
            out += [f"{p}_{name}{label} {getattr(s, field_name) if s else 0}" for label, s in series]
        labels = [label for label, _ in series] if len(series) == len(self.engine_up) else [""]
        out += [f"# HELP {p}_engine_up Whether the engine process runs and takes requests (1) or not (0)."]
        out += [f"# TYPE {p}_engine_up gauge"]
        out += [f"{p}_engine_up{label} {int(up)}" for label, up in zip(labels, self.engine_up)]
        out += [f"# HELP {p}_engine_restarts_total Times the engine process was restarted after a failure."]
        out += [f"# TYPE {p}_engine_restarts_total counter"]
        out += [f"{p}_engine_restarts_total{label} {n}" for label, n in zip(labels, self.engine_restarts)]
        out += [
            f"# HELP {p}_memory_bytes Device memory at start-up: weights, their peak while loading, "
            "KV cache, activations (reserved), CUDA graphs, the card's total.",
            f"# TYPE {p}_memory_bytes gauge",
        ]
        for label, memory in zip(labels, self.memory):
            extra = label[1:-1] + "," if label else ""
            out += [f'{p}_memory_bytes{{{extra}component="{k}"}} {v}' for k, v in sorted(memory.items())]
        out += [f"# HELP {p}_errors_total API errors answered, by error code.", f"# TYPE {p}_errors_total counter"]
        out += [f'{p}_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors_by_code.items())]
        if self.replica_requests is not None:
            out += [f"# HELP {p}_replica_requests_total Requests routed to each data-parallel replica."]
            out += [f"# TYPE {p}_replica_requests_total counter"]
            out += [f'{p}_replica_requests_total{{replica="{i}"}} {n}' for i, n in enumerate(self.replica_requests)]
        return "\n".join(out) + "\n" + self.vllm.render(self.engine)


class VllmMetrics:
    """The metrics vLLM users scrape, under vLLM's names (`vllm:...`, label `model_name`),
    through prometheus_client.

    Every observation is made in the HTTP process (the engines report through it), so one
    registry in that process sees all of them, with any number of engine processes or
    data-parallel replicas; engine gauges are read from the latest engine statistics at
    scrape time.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.model_name = ""
        self.registry = CollectorRegistry(auto_describe=True)
        self._engine: EngineStats | None = None
        label = ["model_name"]

        def counter(name: str, doc: str, labels=label):
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets):
            return Histogram(name, doc, label, buckets=buckets, registry=self.registry)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.request_success = counter(
            "vllm:request_success", "Count of successfully processed requests.", ["model_name", "finished_reason"]
        )
        self.prefix_cache_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", _LATENCY_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", _LATENCY_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", _LATENCY_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", _LATENCY_BUCKETS)
        token_buckets = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.registry.register(_EngineCollector(self))
        # Labelled children by (metric, labels): `labels()` costs microseconds, and the
        # per-token metrics are updated ~20k times a second at high concurrency.
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def first_output(self, num_prompt_tokens: int, num_cached_tokens: int, ttft: float) -> None:
        """A request's first tokens arrived."""
        name = self.model_name
        self._child(self.prefix_cache_queries, name).inc(num_prompt_tokens)
        self._child(self.prefix_cache_hits, name).inc(num_cached_tokens)
        self._child(self.ttft, name).observe(ttft)

    def next_token(self, gap: float) -> None:
        """Time between two outputs of one request."""
        self._child(self.tpot, self.model_name).observe(gap)
        self._child(self.itl, self.model_name).observe(gap)

    def tokens_generated(self, count: int) -> None:
        """`count` more output tokens."""
        self._child(self.generation_tokens, self.model_name).inc(count)

    def prompt_processed(self, model_name: str, count: int) -> None:
        """`count` more prompt tokens, for `model_name`."""
        self._child(self.prompt_tokens, model_name).inc(count)

    def finished(self, reason: str | None, prompt_tokens: int, generation_tokens: int, latency: float) -> None:
        """A request ended (`reason`: stop, length, tool_calls, abort...)."""
        name = self.model_name
        self._child(self.request_success, name, reason or "stop").inc()
        self._child(self.request_prompt_tokens, name).observe(prompt_tokens)
        self._child(self.request_generation_tokens, name).observe(generation_tokens)
        self._child(self.e2e, name).observe(latency)

    def render(self, engine: EngineStats | None) -> str:
        """The vllm: series, in the Prometheus text format."""
        from prometheus_client import generate_latest

        self._engine = engine
        return generate_latest(self.registry).decode()


class _EngineCollector:
    """Engine gauges under vLLM's names (and, with LoRA, `lora_metrics`' series), from the
    latest engine statistics."""

    def __init__(self, metrics: VllmMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats, name = self.metrics._engine, self.metrics.model_name
        usage = stats.kv_pages_in_use / stats.kv_pages_total if stats and stats.kv_pages_total else 0.0
        for metric, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", stats.num_running if stats else 0),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", stats.num_waiting if stats else 0),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage),
            ("vllm:gpu_cache_usage_perc", "KV-cache usage (the older name). 1 means 100 percent usage.", usage),
        ):
            family = GaugeMetricFamily(metric, doc, labels=["model_name"])
            family.add_metric([name], value)
            yield family
        family = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels=["model_name"])
        family.add_metric([name], stats.num_preemptions if stats else 0)
        yield family
        yield from _spec_decode_families(stats.spec_decode if stats else None, name)
        yield from lora_families(stats.lora if stats else None)


def _spec_decode_families(spec, name: str):
    """vLLM's speculative-decoding counters (`vllm:spec_decode_*`), from the engine's totals;
    absent while nothing was drafted (speculation off, or no draft yet)."""
    from prometheus_client.core import CounterMetricFamily

    if spec is None or spec.num_drafts == 0:
        return
    for metric, doc, value in (
        ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", spec.num_drafts),
        ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", spec.num_draft_tokens),
        ("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", spec.num_accepted_tokens),
    ):
        family = CounterMetricFamily(metric, doc, labels=["model_name"])
        family.add_metric([name], value)
        yield family
    family = CounterMetricFamily(
        "vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.", labels=["model_name", "position"]
    )
    for position, value in enumerate(spec.accepted_per_pos):
        family.add_metric([name, str(position)], value)
    yield family
