"""Asynchronous scheduling changes nothing a client sees: the same tokens in the same order
and the same finish reasons as the synchronous loop, through batching, chunked prefill,
preemption, stop tokens, seeded sampling, penalties, logprobs and aborts.

The engine is device-agnostic, so the overlap logic (placeholders for tokens still on the
device, steps read one call late) is checked on the CPU.
"""

import pytest

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=5)


def _engine(path, asynchronous, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=128)
    settings.update(overrides)
    engine = build_engine(resolve_model(PipelineConfig(**settings), register_all()))
    engine.async_scheduling = asynchronous
    return engine


def _prompts(n):
    base = [1, 50, 60, 70, 80, 90, 100, 110, 120, 130]
    return [base[: 1 + (i * 3) % 10] + [200 + j for j in range(i * 2)] for i in range(n)]


def _run(engine, requests, joins=None, abort_at=None):
    """Runs (id, prompt, params) requests, adding request i at step joins[i]; returns each
    request's tokens, finish reason and per-token logprobs, plus the engine's outputs' order."""
    joins = joins or [0] * len(requests)
    tokens = {rid: [] for rid, _, _ in requests}
    finish, logprobs = {}, {rid: [] for rid, _, _ in requests}
    step = 0
    while step <= max(joins) or engine.has_unfinished():
        for (rid, prompt, params), when in zip(requests, joins):
            if when == step:
                engine.add_request(rid, prompt, params)
        if abort_at is not None and step == abort_at[1]:
            engine.abort(abort_at[0])
            finish[abort_at[0]] = "abort"
        for out in engine.step():
            assert rid not in finish or out.request_id != rid or not out.new_token_ids
            tokens[out.request_id].extend(out.new_token_ids)
            logprobs[out.request_id].extend(lp.logprob for lp in out.logprobs or [])
            if out.finished:
                assert out.request_id not in finish or finish[out.request_id] == "abort"
                finish[out.request_id] = out.finish_reason
        step += 1
    assert engine.kv_cache.pool.num_in_use == 0
    return tokens, finish, logprobs


def _both(checkpoint, requests, joins=None, **overrides):
    sync = _run(_engine(checkpoint, False, **overrides), requests, joins)
    overlapped = _run(_engine(checkpoint, True, **overrides), requests, joins)
    return sync, overlapped


def test_staggered_greedy_batch_is_unchanged(checkpoint):
    greedy = SamplingParams(max_new_tokens=9, temperature=0.0, ignore_eos=True)
    requests = [(str(i), p, greedy) for i, p in enumerate(_prompts(6))]
    sync, overlapped = _both(checkpoint, requests, joins=[0, 0, 1, 2, 5, 9])
    assert sync == overlapped
    assert all(len(t) == 9 for t in overlapped[0].values())


def test_chunked_prefill_small_batches_and_preemption_are_unchanged(checkpoint):
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    requests = [(str(i), p, greedy) for i, p in enumerate(_prompts(8))]
    sync, overlapped = _both(checkpoint, requests, max_num_batched_tokens=5, max_batch_size=3)
    assert sync == overlapped
    page_bytes = _engine(checkpoint, False).kv_cache.params.bytes_per_page
    engine = _engine(checkpoint, True, max_length=64, kv_cache_memory=16 * page_bytes)
    preempted = _run(engine, requests)
    assert engine.scheduler.num_preemptions > 0
    assert preempted == sync


def test_stop_tokens_eos_and_lengths_finish_at_the_same_token(checkpoint):
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    probe = _run(_engine(checkpoint, False), [("p", _prompts(4)[3], greedy)])[0]["p"]
    requests = [
        ("stop", _prompts(4)[3], SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[probe[2]])),
        ("len1", _prompts(2)[1], SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True)),
        ("len4", _prompts(3)[2], SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)),
        ("prompt-only", _prompts(2)[1], SamplingParams(max_new_tokens=0, temperature=0.0)),
    ]
    sync, overlapped = _both(checkpoint, requests)
    assert sync == overlapped
    tokens, finish, _ = overlapped
    assert tokens["stop"] == probe[:3] and finish["stop"] == "stop"
    assert finish == {"stop": "stop", "len1": "length", "len4": "length", "prompt-only": "length"}
    assert [len(tokens[r]) for r in ("len1", "len4", "prompt-only")] == [1, 4, 0]


def test_seeded_sampling_penalties_and_logprobs_are_unchanged(checkpoint):
    requests = [
        ("seeded", _prompts(3)[2], SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)),
        ("topk", _prompts(4)[3], SamplingParams(max_new_tokens=8, temperature=1.2, top_k=5, seed=3, ignore_eos=True)),
        ("penalized", _prompts(2)[1], SamplingParams(max_new_tokens=8, temperature=0.0, frequency_penalty=1.5, repetition_penalty=1.3, ignore_eos=True)),
        ("logprobs", _prompts(5)[4], SamplingParams(max_new_tokens=6, temperature=0.0, logprobs=2, ignore_eos=True)),
        ("prompt-logprobs", _prompts(3)[1], SamplingParams(max_new_tokens=3, temperature=0.0, prompt_logprobs=1, ignore_eos=True)),
    ]
    sync, overlapped = _both(checkpoint, requests, joins=[0, 1, 1, 2, 3])
    assert sync[0] == overlapped[0] and sync[1] == overlapped[1]
    for rid in sync[2]:
        assert overlapped[2][rid] == pytest.approx(sync[2][rid], abs=1e-6)


def test_abort_while_a_step_is_in_flight(checkpoint):
    greedy = SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True)
    requests = [("keep", _prompts(3)[2], greedy), ("drop", _prompts(4)[3], greedy)]
    engine = _engine(checkpoint, True)
    tokens, finish, _ = _run(engine, requests, abort_at=("drop", 4))
    alone = _run(_engine(checkpoint, True), requests[:1])[0]["keep"]
    assert tokens["keep"] == alone and finish == {"keep": "length", "drop": "abort"}
    assert 0 < len(tokens["drop"]) < 20
    assert not engine.has_unfinished()


def test_overlapped_steps_report_one_call_late(checkpoint):
    engine = _engine(checkpoint, True)
    engine.add_request("a", _prompts(3)[2], SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True))
    assert engine.step() == []  # the prefill is launched; its token is read by the next call
    first = engine.step()
    assert len(first) == 1 and len(first[0].new_token_ids) == 1
    assert engine.has_unfinished()
