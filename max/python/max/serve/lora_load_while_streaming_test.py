"""Loading a LoRA adapter while 64 requests stream, through the engine process's own loop
(`engine_worker._serve`, fed by queues, on a tiny CPU checkpoint): the adapter is read in
the background while the engine keeps stepping, so no request fails or goes a step without
a token, every request gets the tokens it gets without the load, and the new adapter's
requests join the running batch with the tokens they get alone.

Stalls are counted in engine steps (one `StepOutputs` a loop turn), not seconds."""

import os
import queue
import threading
import time

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.pipelines.lib.lora import registry as lora_registry
from max.serve.engine_messages import AddRequest, LoRAAdapterOp, Shutdown, StepOutputs
from max.serve.engine_worker import StepWatchdog, _serve
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_lora import write_tiny_adapter

STREAMS, TOKENS, LATE = 64, 32, 4
READ_TURNS = 3  # the adapter's read is held back this many steps (a slow disk or Hub)


def _prompt(i):
    return [1, 5 + i, 90 + 3 * i, 7, 200 + i]


def _engine(base, adapter):
    config = PipelineConfig(
        model_path=str(base), kv_cache_page_size=4, max_length=128, max_batch_size=STREAMS + LATE,
        enable_lora=True, lora_modules=[f"a={adapter}"], max_loras=2, max_lora_rank=8,
    )  # fmt: skip
    return build_engine(resolve_model(config, register_all()))


def _run(engine, load_path=None, release=None):
    """Streams STREAMS requests (every other one on adapter a) through `_serve`; with
    `load_path`, loads it as adapter b after the first tokens and then starts LATE requests
    on b. Returns each request's token-bearing loop turns and tokens, the failures, and the
    turns at which the load was asked for and answered."""
    inbox, outbox = queue.Queue(), queue.Queue()
    params = SamplingParams(max_new_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    for i in range(STREAMS):
        inbox.put(AddRequest(f"s{i}", _prompt(i), params, lora="a" if i % 2 else None))
    worker = threading.Thread(target=_serve, args=(engine, inbox, outbox, os.getppid(), StepWatchdog(600, outbox)))
    worker.start()
    turns: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    failures, asked, answered, finished, turn = [], None, None, 0, 0
    deadline = time.monotonic() + 240
    while finished < STREAMS + (LATE if load_path else 0) and time.monotonic() < deadline:
        message = outbox.get(timeout=60)
        assert isinstance(message, StepOutputs), message
        turn += 1
        for out in message.outputs:
            if out.request_id == "load":
                answered = turn
                assert out.error is None, out.error
                for j in range(LATE):
                    inbox.put(AddRequest(f"late{j}", _prompt(j), params, lora="b"))
                continue
            if out.new_token_ids:
                turns.setdefault(out.request_id, []).append(turn)
                tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finish_reason == "error":
                failures.append(out)
            finished += out.finished
        if load_path and asked is None and len(turns) == STREAMS:
            inbox.put(LoRAAdapterOp("load", "b", str(load_path)))
            asked = turn
        if asked is not None and turn == asked + READ_TURNS:
            release.set()
    inbox.put(Shutdown())
    worker.join(timeout=60)
    return turns, tokens, failures, asked, answered


def _hold_reads(monkeypatch) -> threading.Event:
    """Holds every adapter read from now on (in the registry's reader thread) until the
    returned event is set."""
    read, release = lora_registry.read_adapter, threading.Event()

    def held(name, path):
        assert release.wait(timeout=120)
        return read(name, path)

    monkeypatch.setattr(lora_registry, "read_adapter", held)
    return release


def test_loading_an_adapter_while_64_requests_stream_stalls_none_of_them(tmp_path, monkeypatch):
    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=5)
    a = write_tiny_adapter(base, tmp_path / "a", seed=1, rank=4, magnitude=0.2)
    b = write_tiny_adapter(base, tmp_path / "b", seed=2, rank=8, magnitude=0.2)
    without_load = _run(_engine(base, a))[1]
    engine = _engine(base, a)
    turns, tokens, failures, asked, answered = _run(engine, load_path=b, release=_hold_reads(monkeypatch))

    assert not failures
    assert asked is not None and answered is not None
    # The read took several steps, and the streams kept going meanwhile.
    streaming = [t for rid, ts in turns.items() if rid.startswith("s") for t in ts]
    assert answered - asked >= READ_TURNS and max(streaming) > answered
    # No stream went a step without a token: consecutive tokens come in consecutive turns.
    gaps = {rid: max(b - a for a, b in zip(ts, ts[1:])) for rid, ts in turns.items()}
    assert max(gaps.values()) == 1, {rid: g for rid, g in gaps.items() if g > 1}
    assert all(len(tokens[f"s{i}"]) == TOKENS for i in range(STREAMS))
    # The load changed nobody's tokens; the late requests ran on b beside the streams
    # (b took the second device slot) and got the tokens they get alone.
    assert {rid: tokens[rid] for rid in without_load} == without_load
    late_turns = [t for j in range(LATE) for t in turns[f"late{j}"]]
    assert min(late_turns) < max(streaming)
    alone = greedy_tokens(engine, [_prompt(j) for j in range(LATE)], TOKENS, loras=["b"] * LATE)
    assert [tokens[f"late{j}"] for j in range(LATE)] == alone
    assert alone != greedy_tokens(engine, [_prompt(j) for j in range(LATE)], TOKENS, loras=["a"] * LATE)
