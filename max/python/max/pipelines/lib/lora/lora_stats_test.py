"""The engine's LoRA statistics (what `/metrics` shows): the adapters of the running and of
the waiting requests after every step, and the loads into device slots and the evictions,
on a CPU engine with three adapters in demand and two slots."""

import time

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.lora.lora_stats import LoRAStats, lora_stats
from max.testing.tiny_lora import tiny_lora_engine

PROMPT = [1, 15, 300, 7, 2048]


def _engine(tmp_path):
    return tiny_lora_engine(tmp_path)


def _add(engine, request_id, lora, n):
    engine.add_request(request_id, PROMPT, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True), lora=lora)


def _run(engine) -> list[LoRAStats]:
    """Steps the engine until it is idle; its LoRA statistics after every step."""
    seen = []
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
        seen.append(engine.stats().lora)
    return seen


def test_running_and_waiting_adapters_and_slot_evictions(tmp_path):
    engine = _engine(tmp_path)
    before = engine.stats().lora
    assert before.enabled and before.max_loras == 2
    assert (before.running, before.waiting, before.slot_loads, before.slot_evictions) == ({}, {}, 0, 0)
    for rid, lora, n in [("a1", "a", 8), ("a2", "a", 4), ("b1", "b", 2), ("c1", "c", 4), ("base", None, 4)]:
        _add(engine, rid, lora, n)
    assert engine.stats().lora.waiting == {"a": 2, "b": 1, "c": 1}  # base requests are not counted

    engine.step()
    first = engine.stats().lora
    # a and b take both slots; c waits (the base request runs, in no slot).
    assert (first.running, first.waiting) == ({"a": 2, "b": 1}, {"c": 1})
    assert (first.slot_loads, first.slot_evictions) == (2, 0)
    assert abs(first.updated_at - time.time()) < 60

    later = _run(engine)
    assert all(len(s.running) <= 2 for s in later)
    # b's only request finishes, c takes b's slot: one more load, and it evicted b.
    with_c = next(i for i, s in enumerate(later) if "c" in s.running)
    assert later[with_c].running.keys() == {"a", "c"} and not later[with_c].waiting
    assert all("b" not in s.running for s in later[with_c:])
    done = later[-1]
    assert (done.running, done.waiting, done.slot_loads, done.slot_evictions) == ({}, {}, 3, 1)
    assert [s.updated_at for s in later] == sorted(s.updated_at for s in later)

    # b again: loaded anew into the least recently used slot, evicting its adapter.
    _add(engine, "b2", "b", 2)
    assert _run(engine)[-1].slot_loads == 4 and engine.stats().lora.slot_evictions == 2
    # A request of a resident adapter loads nothing.
    _add(engine, "b3", "b", 2)
    assert (_run(engine)[-1].slot_loads, engine.stats().lora.slot_evictions) == (4, 2)


def test_without_lora_nothing_is_enabled():
    assert not lora_stats(None, [], []).enabled


def test_replicas_statistics_add_up():
    one = LoRAStats(2, {"a": 1}, {"c": 2}, 3, 1, 10.0)
    two = LoRAStats(2, {"a": 2, "b": 1}, {}, 5, 2, 12.0)
    total = sum([one, two])  # as the data-parallel pool adds `EngineStats` fields
    assert total == LoRAStats(2, {"a": 3, "b": 1}, {"c": 2}, 8, 3, 12.0)
    assert sum([LoRAStats()]) == LoRAStats()
