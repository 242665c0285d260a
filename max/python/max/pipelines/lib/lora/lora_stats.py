"""A snapshot of LoRA serving for `/metrics`: which adapters the running and the waiting
requests use, and how often adapters were copied into the device slots.

The first part is what vLLM's `vllm:lora_requests_info` gauge carries (adapter names of the
running and of the waiting requests, the slot count `max_loras`, the time of the snapshot);
the slot counters tell an operator whether `--max-loras` is too small for the traffic: an
eviction is a load that displaced another adapter, so evictions growing about as fast as
loads mean that requests keep waiting for adapters to be copied in.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from max.pipelines.lib.lora.registry import AdapterRequest, LoRARegistry


@dataclass
class LoRAStats:
    """LoRA serving at one moment; `max_loras` 0 means LoRA is off (nothing to show).

    Counts add up across data-parallel replicas (`sum()` of `EngineStats` adds every field).
    """

    max_loras: int = 0
    running: dict[str, int] = field(default_factory=dict)  # adapter name -> running requests
    waiting: dict[str, int] = field(default_factory=dict)  # adapter name -> waiting requests
    slot_loads: int = 0  # adapters copied into a device slot, since start-up
    slot_evictions: int = 0  # of those, loads that displaced another adapter
    updated_at: float = 0.0  # wall-clock time of the snapshot (seconds since the epoch)

    @property
    def enabled(self) -> bool:
        """The engine serves LoRA adapters (`--enable-lora`)."""
        return self.max_loras > 0

    def __add__(self, other: LoRAStats) -> LoRAStats:
        return LoRAStats(
            max(self.max_loras, other.max_loras),  # the per-step limit, the same on every replica
            dict(Counter(self.running) + Counter(other.running)),
            dict(Counter(self.waiting) + Counter(other.waiting)),
            self.slot_loads + other.slot_loads,
            self.slot_evictions + other.slot_evictions,
            max(self.updated_at, other.updated_at),
        )

    def __radd__(self, other: object) -> LoRAStats:
        # `sum()` starts from 0.
        if other == 0:
            return self
        return NotImplemented


def lora_stats(
    registry: LoRARegistry | None,
    running: Iterable[AdapterRequest],
    waiting: Iterable[AdapterRequest],
) -> LoRAStats:
    """The snapshot of an engine with `registry` (None: LoRA off) and these requests."""
    if registry is None:
        return LoRAStats()
    return LoRAStats(
        registry.max_loras,
        _requests_by_adapter(running),
        _requests_by_adapter(waiting),
        registry.slot_loads,
        registry.slot_evictions,
        time.time(),
    )


def _requests_by_adapter(requests: Iterable[AdapterRequest]) -> dict[str, int]:
    """How many of `requests` use each adapter (base-model requests are not counted)."""
    return dict(Counter(r.lora.name for r in requests if r.lora is not None))
