"""An engine with fewer adapter slots than adapters in demand: a request whose adapter has
no free slot waits without holding up the requests behind it, takes the slot of an adapter
whose requests finished (least recently used), and gets the tokens it gets alone."""

from max.pipelines.lib import SamplingParams
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_lora import tiny_lora_engine

PROMPT = [1, 15, 300, 7, 2048]


def test_a_request_waiting_for_a_slot_does_not_hold_up_the_queue(tmp_path):
    engine = tiny_lora_engine(tmp_path)
    requests = [("long_a", "a", 12), ("short_b", "b", 3), ("c", "c", 6), ("base", None, 6), ("more_a", "a", 6)]
    for rid, lora, n in requests:
        engine.add_request(rid, PROMPT, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True), lora=lora)
    tokens: dict[str, list[int]] = {rid: [] for rid, _, _ in requests}
    first_step, finished_step, step = {}, {}, 0
    while engine.has_unfinished():
        step += 1
        for out in engine.step():
            assert out.error is None, out.error
            if out.new_token_ids:
                first_step.setdefault(out.request_id, step)
                tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finished_step[out.request_id] = step
    # a and b hold both slots: c waits, and the base request and a's second one, queued
    # behind c, run from the first step.
    assert first_step["base"] == first_step["more_a"] == first_step["long_a"] == 1
    # c runs once b's only request is done (b's slot is the idle one).
    assert finished_step["short_b"] <= first_step["c"] - 1 < finished_step["long_a"]
    # Reloading slots changed nobody's tokens.
    for rid, lora, n in requests:
        assert tokens[rid] == greedy_tokens(engine, [PROMPT], n, loras=[lora])[0], rid
    assert len({tuple(tokens[r][:3]) for r in ("long_a", "short_b", "c", "base")}) == 4
