"""Speculative decoding changes no output: greedy and seeded sampling emit exactly the tokens
(and logprobs) of the same engine without it, through n-gram drafts and an oracle (right,
and deliberately wrong so that drafts are rejected and rolled back), with stop tokens,
max_tokens, batching with requests that do not speculate, chunked prefill, prefix caching,
preemption, asynchronous scheduling and disable_by_batch_size."""

import pytest

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.pipelines.lib.speculative.oracle_proposer import OracleProposer
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

STEPS = 12
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=11)


def _engine(path, proposer=None, k=3, disable=None, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=128)
    settings.update(overrides)
    if proposer is not None:  # the oracle: a test-only proposer, not a flag
        settings["speculative_config"] = {**NGRAM, "num_speculative_tokens": k, "disable_by_batch_size": disable}
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()), proposer=proposer)


def _prompts():
    # Repetitive prompts (lookup finds matches) and plain ones, some sharing a prefix.
    loop = [1, 40, 41, 42, 43, 40, 41, 42, 43, 40, 41]
    return [loop, [1, 50, 60, 70, 80, 90], loop + [44, 45], [1, 7] * 6, [1, 300, 301]]


def _greedy(**kw):
    return SamplingParams(**{"max_new_tokens": STEPS, "temperature": 0.0, "ignore_eos": True, **kw})


def _run(engine, requests, joins=None):
    """Runs (id, prompt, params) requests (request i joins at step joins[i]); returns tokens,
    finish reasons and logprobs by id."""
    joins = joins or [0] * len(requests)
    tokens = {rid: [] for rid, _, _ in requests}
    finish, logprobs = {}, {rid: [] for rid, _, _ in requests}
    step = 0
    while step <= max(joins) or engine.has_unfinished():
        for (rid, prompt, params), when in zip(requests, joins):
            if when == step:
                engine.add_request(rid, list(prompt), params)
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            logprobs[out.request_id].extend(lp.logprob for lp in out.logprobs or [])
            if out.finished:
                finish[out.request_id] = out.finish_reason
        step += 1
    assert engine.kv_cache.pool.num_in_use == 0
    return tokens, finish, logprobs


def _requests(params=None):
    return [(f"r{i}", p, params or _greedy()) for i, p in enumerate(_prompts())]


def _references(checkpoint, requests):
    tokens, _, _ = _run(_engine(checkpoint), requests)
    return {rid: list(prompt) + tokens[rid] for rid, prompt, _ in requests}


def test_ngram_greedy_matches_plain_decoding(checkpoint):
    requests = _requests()
    plain = _run(_engine(checkpoint), requests)
    engine = _engine(checkpoint, speculative_config=NGRAM)
    assert _run(engine, requests) == plain
    stats = engine.stats().spec_decode
    assert stats.num_drafts > 0 and 0 < stats.num_accepted_tokens <= stats.num_draft_tokens
    assert sum(stats.accepted_per_pos) == stats.num_accepted_tokens


def test_oracle_accepts_everything_and_matches(checkpoint):
    requests = _requests()
    refs = _references(checkpoint, requests)
    engine = _engine(checkpoint, OracleProposer(refs, 1000), k=4)
    tokens, finish, _ = _run(engine, requests)
    assert tokens == {rid: refs[rid][len(p) :] for rid, p, _ in requests}
    stats = engine.stats().spec_decode
    assert stats.acceptance_rate == 1.0
    # Up to 5 tokens per step: far fewer steps than tokens.
    assert stats.mean_accepted_length > 3.0


def test_wrong_oracle_is_rolled_back(checkpoint):
    requests = _requests()
    refs = _references(checkpoint, requests)
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=3), k=4)
    tokens, _, _ = _run(engine, requests)
    assert tokens == {rid: refs[rid][len(p) :] for rid, p, _ in requests}
    stats = engine.stats().spec_decode
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens


def test_stop_token_and_max_tokens_truncate_accepted_drafts(checkpoint):
    base = _requests()
    refs = _references(checkpoint, base)
    requests = []
    for rid, prompt, _ in base:
        out = refs[rid][len(prompt) :]
        # A stop token in the middle of what the oracle proposes, and odd max_tokens.
        requests.append((rid + "-stop", prompt, SamplingParams(max_new_tokens=STEPS, temperature=0.0, stop_token_ids=[out[6]])))
        requests.append((rid + "-len", prompt, SamplingParams(max_new_tokens=7, temperature=0.0, ignore_eos=True)))
    oracle = {rid + suffix: ref for rid, ref in refs.items() for suffix in ("-stop", "-len")}
    plain = _run(_engine(checkpoint), requests)
    spec = _run(_engine(checkpoint, OracleProposer(oracle, 1000), k=4), requests)
    assert spec == plain
    assert all(len(t) == 7 for rid, t in spec[0].items() if rid.endswith("-len"))
    assert all(spec[1][rid] == "stop" for rid in spec[1] if rid.endswith("-stop"))


def test_logprobs_and_seeded_sampling_match(checkpoint):
    sampled = [SamplingParams(max_new_tokens=STEPS, temperature=0.8, top_k=20, seed=s, logprobs=2, ignore_eos=True) for s in range(3)]
    # n > 1 is several requests of one prompt with their own seeds.
    requests = [(f"s{i}", _prompts()[0], p) for i, p in enumerate(sampled)]
    requests += [(f"g{i}", p, _greedy(logprobs=3)) for i, p in enumerate(_prompts())]
    plain = _run(_engine(checkpoint), requests)
    engine = _engine(checkpoint, speculative_config=NGRAM)
    tokens, finish, logprobs = _run(engine, requests)
    assert (tokens, finish) == plain[:2]
    for rid in tokens:
        assert len(logprobs[rid]) == len(tokens[rid])
        # Equal to float32 rounding: a verify step multiplies 1 + k rows at once (GEMM, not GEMV).
        assert logprobs[rid] == pytest.approx(plain[2][rid], abs=1e-5)
    assert engine.stats().spec_decode.num_accepted_tokens > 0


def test_batched_with_requests_that_do_not_speculate(checkpoint):
    requests = _requests()
    # Penalties keep a request from speculating; it still runs beside those that do.
    requests.append(("pen", _prompts()[0], _greedy(repetition_penalty=1.3)))
    plain = _run(_engine(checkpoint), requests, joins=[0, 0, 2, 3, 5, 1])
    assert _run(_engine(checkpoint, speculative_config=NGRAM), requests, joins=[0, 0, 2, 3, 5, 1]) == plain


@pytest.mark.parametrize(
    "settings",
    [
        dict(max_num_batched_tokens=5, max_batch_size=3),  # chunked prefill beside verify steps
        dict(max_length=64, kv_cache_pages=16),  # preemption: the pool holds about 2 requests
    ],
    ids=["chunked_prefill", "preemption"],
)
def test_chunked_prefill_and_preemption(checkpoint, settings):
    settings = dict(settings)
    if "kv_cache_pages" in settings:
        page_bytes = _engine(checkpoint).kv_cache.params.bytes_per_page
        settings["kv_cache_memory"] = settings.pop("kv_cache_pages") * page_bytes
    requests = _requests()
    refs = _references(checkpoint, requests)
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=4), k=4, **settings)
    tokens, _, _ = _run(engine, requests)
    assert tokens == {rid: refs[rid][len(p) :] for rid, p, _ in requests}
    if "kv_cache_memory" in settings:
        assert engine.scheduler.num_preemptions > 0


def test_prefix_cache_commits_only_accepted_tokens(checkpoint):
    requests = _requests()
    refs = _references(checkpoint, requests)
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=3), k=4)
    first = _run(engine, requests)[0]
    # Again in the same engine: prompts (and pages of generated text) come from the cache;
    # a page committed with a rejected draft's keys would change these outputs.
    again = [(rid, refs[rid][:-2], _greedy(max_new_tokens=2)) for rid, _, _ in requests]
    tokens, _, _ = _run(engine, again)
    assert engine.kv_cache.pool.num_cached > 0
    assert tokens == {rid: refs[rid][-2:] for rid, _, _ in requests}
    assert first == {rid: refs[rid][len(p) :] for rid, p, _ in requests}


def test_asynchronous_scheduling_with_speculation(checkpoint):
    # Speculation off while 4 or more run: the run goes from overlapped steps to verify
    # steps (read at once) and back.
    requests = _requests()
    joins = [0, 1, 1, 4, 6]
    refs = _references(checkpoint, requests)
    plain = _run(_engine(checkpoint), requests, joins=joins)
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=3), k=3, disable=4)
    engine.async_scheduling = True
    assert _run(engine, requests, joins=joins) == plain
    assert engine.stats().spec_decode.num_drafts > 0


def test_disable_by_batch_size_turns_speculation_off(checkpoint):
    requests = _requests()
    engine = _engine(checkpoint, speculative_config={**NGRAM, "disable_by_batch_size": 2})
    for rid, prompt, params in requests[:3]:
        engine.add_request(rid, prompt, params)
    engine.step()  # the three prefill
    engine.step()
    assert engine.stats().spec_decode.num_drafts == 0
    while engine.has_unfinished():
        engine.step()


def test_tensor_parallel_on_the_cpu(checkpoint):
    requests = _requests()[:3]
    refs = _references(checkpoint, requests)
    engine = _engine(checkpoint, OracleProposer(refs, 1000, corrupt_every=3), k=4, tensor_parallel_size=2)
    try:
        tokens, _, _ = _run(engine, requests)
    finally:
        engine.close()
    assert tokens == {rid: refs[rid][len(p) :] for rid, p, _ in requests}
    assert engine.stats().spec_decode.num_accepted_tokens > 0
