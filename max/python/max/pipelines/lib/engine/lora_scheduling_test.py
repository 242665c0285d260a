"""The scheduler with LoRA adapter slots: a request whose adapter has no free slot is passed
over (no head-of-line blocking), keeps its place, runs once a slot frees, and cannot be
starved by busy adapters."""

import torch

from max.kv_cache import KVCacheParams, PagedKVCache
from max.pipelines.lib.engine.request import Request, RequestStatus
from max.pipelines.lib.engine.scheduler import MAX_LORA_SKIPS, Scheduler
from max.pipelines.lib.lora.registry import LoRARef
from max.pipelines.lib.sampling.sampling_params import SamplingParams

ADAPTERS = {name: LoRARef(name, uid, f"/adapters/{name}") for uid, name in enumerate("abcd", start=1)}


def _scheduler(max_loras=2, max_batch_size=16):
    params = KVCacheParams(num_layers=1, num_kv_heads=1, head_dim=4, page_size=4, dtype=torch.float32)
    scheduler = Scheduler(PagedKVCache(params, 256, "cpu"), max_batch_size, 512, enable_prefix_caching=False)
    scheduler.max_loras = max_loras
    return scheduler


def _request(request_id, lora=None, arrival=0):
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    request = Request(request_id, [1, 2, 3], 3, params, 0, 64, arrival, lora=lora and ADAPTERS[lora])
    return request


def _admitted(scheduler):
    return [c.request.request_id for c in scheduler.schedule().chunks]


def _finish(scheduler, request_id):
    (request,) = [r for r in scheduler.running if r.request_id == request_id]
    scheduler.remove(request)


def test_a_request_without_a_free_adapter_slot_does_not_block_those_behind_it():
    scheduler = _scheduler(max_loras=2)
    for i, lora in enumerate(["a", "b", "c", None, "a", "b", "d"]):
        scheduler.add(_request(f"r{i}", lora, i))
    # a and b take both slots: c and d wait; the base request and those of a and b run.
    assert _admitted(scheduler) == ["r0", "r1", "r3", "r4", "r5"]
    assert [r.request_id for r in scheduler.waiting] == ["r2", "r6"]  # in arrival order
    # While a and b still run, c keeps waiting (the running requests decode meanwhile).
    for r in scheduler.running:
        r.num_computed = len(r.tokens)
    assert "r2" not in _admitted(scheduler)
    # Every request of adapter a finishes: its slot frees, and c (first in line) takes it.
    _finish(scheduler, "r0")
    _finish(scheduler, "r4")
    assert "r2" in _admitted(scheduler)
    assert [r.request_id for r in scheduler.waiting] == ["r6"]
    assert {r.lora.uid for r in scheduler.running if r.lora} == {ADAPTERS["b"].uid, ADAPTERS["c"].uid}


def test_a_request_passed_over_long_enough_stops_busy_adapters_from_keeping_their_slots():
    scheduler = _scheduler(max_loras=1, max_batch_size=64)
    scheduler.add(_request("a0", "a"))
    scheduler.add(_request("b0", "b"))
    assert _admitted(scheduler) == ["a0"]
    arrival = 1
    # Adapter a keeps getting new requests: each is admitted past b0 (a has the slot) ...
    for step in range(MAX_LORA_SKIPS - 2):  # b0 was passed over once already
        scheduler.add(_request(f"a{arrival}", "a", arrival))
        arrival += 1
        admitted = _admitted(scheduler)
        assert f"a{arrival - 1}" in admitted and "b0" not in admitted, step
    # ... until b0 has waited MAX_LORA_SKIPS steps: then a's new requests wait behind it
    # (base requests still run, they hold no slot), a drains, and b0 gets the slot.
    scheduler.add(_request("late_a", "a", arrival))
    scheduler.add(_request("base", None, arrival + 1))
    admitted = _admitted(scheduler)
    assert "late_a" not in admitted and "base" in admitted
    for r in [r for r in scheduler.running if r.lora is not None]:
        scheduler.remove(r)
    admitted = _admitted(scheduler)
    assert "b0" in admitted and "late_a" not in admitted
    assert [r.request_id for r in scheduler.waiting] == ["late_a"]
    assert all(r.status is RequestStatus.RUNNING for r in scheduler.running)


def test_without_lora_limits_nothing_is_passed_over():
    scheduler = _scheduler()
    scheduler.max_loras = None
    for i, lora in enumerate("abcd"):
        scheduler.add(_request(f"r{i}", lora, i))
    assert _admitted(scheduler) == ["r0", "r1", "r2", "r3"]
    assert not scheduler.waiting
