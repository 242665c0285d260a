"""The LoRA series of `/metrics` (with `--enable-lora` only), from the engine's `LoRAStats`.

- `vllm:lora_requests_info`, vLLM's gauge under vLLM's labels, which load balancers read
  (e.g. the Gateway API inference extension's LoRA affinity): `max_lora` (adapters one step
  may use: `--max-loras`), `running_lora_adapters` and `waiting_lora_adapters` (the adapter
  names of the running and of the waiting requests, comma-separated, sorted); its value is
  the time of the engine's snapshot (seconds since the epoch), so that a reader can tell the
  latest. vLLM keeps one series for every label combination it has seen; this page shows
  only the current one, which is the one such a reader picks.
- `max_serve_lora_adapter_loads_total`, `max_serve_lora_adapter_evictions_total`: adapters
  copied into a device slot, and those copies that displaced a resident adapter. vLLM has no
  such counters, hence our own prefix (that of the other `max_serve_*` series).
"""

from __future__ import annotations

from collections.abc import Iterator

from max.pipelines.lib.lora import LoRAStats

LORA_INFO_LABELS = ["max_lora", "waiting_lora_adapters", "running_lora_adapters"]


def lora_families(lora: LoRAStats | None) -> Iterator:
    """prometheus_client metric families of `lora` (none while LoRA is off or unknown)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if lora is None or not lora.enabled:
        return
    info = GaugeMetricFamily(
        "vllm:lora_requests_info", "Running stats on lora requests.", labels=LORA_INFO_LABELS
    )
    info.add_metric(
        [str(lora.max_loras), _names(lora.waiting), _names(lora.running)], lora.updated_at
    )
    yield info
    for name, doc, value in (
        (
            "max_serve_lora_adapter_loads",
            "LoRA adapters copied into a device slot.",
            lora.slot_loads,
        ),
        (
            "max_serve_lora_adapter_evictions",
            "LoRA adapter loads that displaced another adapter from its device slot.",
            lora.slot_evictions,
        ),
    ):
        family = CounterMetricFamily(name, doc)
        family.add_metric([], value)
        yield family


def _names(requests_by_adapter: dict[str, int]) -> str:
    """The adapters that have requests, as vLLM writes them into a label."""
    return ",".join(sorted(name for name, n in requests_by_adapter.items() if n > 0))
