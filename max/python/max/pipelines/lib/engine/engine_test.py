"""Continuous batching changes nothing: batched, chunked, preempted and prefix-cached
requests produce exactly what they produce alone; pages return when requests end."""

import pytest

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

STEPS = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=11)


def _engine(path, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=128)
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _prompts(n):
    # Different lengths (1 to 30 tokens), some sharing a prefix.
    base = [1, 50, 60, 70, 80, 90, 100, 110, 120, 130]
    return [base[: 1 + (i * 3) % 10] + [200 + j for j in range(i * 2)] for i in range(n)]


def _run_staggered(engine, prompts, joins, steps=STEPS):
    """Adds prompt i at step joins[i]; returns each request's greedy tokens."""
    params = SamplingParams(max_new_tokens=steps, temperature=0.0, ignore_eos=True)
    out = {i: [] for i in range(len(prompts))}
    step = 0
    while step <= max(joins) or engine.has_unfinished():
        for i, when in enumerate(joins):
            if when == step:
                engine.add_request(str(i), prompts[i], params)
        for o in engine.step():
            out[int(o.request_id)].extend(o.new_token_ids)
        step += 1
    return [out[i] for i in range(len(prompts))]


def test_batch_of_8_joining_at_different_steps_matches_alone(checkpoint):
    prompts = _prompts(8)
    engine = _engine(checkpoint)
    alone = [greedy_tokens(engine, [p], STEPS)[0] for p in prompts]
    batched = _run_staggered(engine, prompts, joins=[0, 0, 1, 3, 3, 5, 8, 13])
    assert batched == alone
    assert engine.kv_cache.pool.num_in_use == 0


def test_chunked_prefill_and_small_batches_match(checkpoint):
    prompts = _prompts(8)
    reference = greedy_tokens(_engine(checkpoint), prompts, STEPS)
    # 5 tokens per step: long prompts are prefilled over several steps, next to decodes.
    engine = _engine(checkpoint, max_num_batched_tokens=5, max_batch_size=3)
    assert greedy_tokens(engine, prompts, STEPS) == reference
    assert engine.kv_cache.pool.num_in_use == 0


def test_preemption_by_recomputation_matches(checkpoint):
    prompts = _prompts(8)
    reference = greedy_tokens(_engine(checkpoint), prompts, STEPS)
    # 16 pages of 4 tokens hold about 2 requests: the others are preempted and recomputed.
    page_bytes = _engine(checkpoint).kv_cache.params.bytes_per_page
    engine = _engine(checkpoint, max_length=64, kv_cache_memory=16 * page_bytes)
    assert engine.kv_cache.num_pages == 16
    assert greedy_tokens(engine, prompts, STEPS) == reference
    assert engine.scheduler.num_preemptions > 0
    assert engine.kv_cache.pool.num_in_use == 0


def test_prefix_cache_hits_give_the_same_output(checkpoint):
    shared = [1] + list(range(300, 325))  # 26 tokens: 6 full pages
    prompts = [shared + [7, 8], shared + [9], shared + [7, 8]]
    cold = [greedy_tokens(_engine(checkpoint, enable_prefix_caching=False), [p], STEPS)[0] for p in prompts]
    engine = _engine(checkpoint)
    first = greedy_tokens(engine, [prompts[0]], STEPS)[0]
    assert engine.kv_cache.pool.num_cached > 0
    engine.add_request("hit", prompts[1], SamplingParams(max_new_tokens=1, temperature=0.0))
    (out,) = engine.step()
    assert out.num_cached_tokens == 24
    while engine.has_unfinished():
        engine.step()
    warm = [first] + [greedy_tokens(engine, [p], STEPS)[0] for p in prompts[1:]]
    assert warm == cold
    assert engine.kv_cache.pool.num_in_use == 0


def test_decode_fast_path_matches_full_preparation(checkpoint):
    """The runner's decode fast path gives the same inputs as building them from scratch."""
    engine = _engine(checkpoint)
    prompts = _prompts(3)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    engine.step()  # prefill all three
    plan = engine.scheduler.schedule()
    builder = engine.runner.inputs
    full = builder.build(plan.chunks)
    assert builder._last is not None
    fast = builder.next_decode(builder._last_tokens, builder._last)
    for name in ("tokens", "positions", "logits_indices"):
        assert getattr(fast, name).tolist() == getattr(full, name).tolist(), name
    for name in ("query_start", "context_lens", "slot_mapping"):
        assert getattr(fast.layout, name).tolist() == getattr(full.layout, name).tolist(), name
    assert fast.layout.context_lens_host == full.layout.context_lens_host


def test_seeded_sampling_is_reproducible_regardless_of_batch(checkpoint):
    engine = _engine(checkpoint)
    prompts = _prompts(4)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)

    def run(batch):
        for i, p in enumerate(batch):
            engine.add_request(f"s{i}", p, params if i == 0 else SamplingParams(max_new_tokens=10, temperature=0.7, ignore_eos=True))
        out = {}
        while engine.has_unfinished():
            for o in engine.step():
                out.setdefault(o.request_id, []).extend(o.new_token_ids)
        return out["s0"]

    alone = run(prompts[:1])
    assert run(prompts) == alone
    engine.add_request("other-seed", prompts[0], SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True))
    other = []
    while engine.has_unfinished():
        for o in engine.step():
            other.extend(o.new_token_ids)
    assert other != alone


def test_abort_frees_pages_at_once(checkpoint):
    engine = _engine(checkpoint)
    engine.add_request("a", _prompts(5)[4], SamplingParams(max_new_tokens=50, temperature=0.0))
    engine.step()
    assert engine.kv_cache.pool.num_in_use > 0
    out = engine.abort("a")
    assert out.finished and out.finish_reason == "abort"
    assert engine.kv_cache.pool.num_in_use == 0 and not engine.has_unfinished()
    assert engine.abort("a") is None


def test_stop_token_and_length_finish_reasons(checkpoint):
    engine = _engine(checkpoint)
    prompt = _prompts(3)[2]
    first = greedy_tokens(engine, [prompt], 3)[0]
    engine.add_request("stop", prompt, SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=[first[1]]))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert [t for o in outs for t in o.new_token_ids] == first[:2]
    assert outs[-1].finish_reason == "stop"
    engine.add_request("len", prompt, SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert outs[-1].finish_reason == "length" and sum(len(o.new_token_ids) for o in outs) == 3


def test_logprobs_and_prompt_logprobs(checkpoint):
    engine = _engine(checkpoint)
    prompt = _prompts(4)[3]
    engine.add_request("lp", prompt, SamplingParams(max_new_tokens=2, temperature=0.0, logprobs=3, prompt_logprobs=2))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    first = outs[0]
    assert first.prompt_logprobs[0] is None and len(first.prompt_logprobs) == len(prompt)
    assert [p.token_id for p in first.prompt_logprobs[1:]] == prompt[1:]
    lp = first.logprobs[0]
    assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id  # greedy picks the top token
    assert lp.logprob == pytest.approx(lp.top[0][1])


def test_invalid_requests_are_refused(checkpoint):
    engine = _engine(checkpoint, max_length=32)
    with pytest.raises(MaxError, match="maximum length is 32"):
        engine.add_request("long", list(range(1, 40)), SamplingParams())
    with pytest.raises(MaxError, match="exceeds the model's maximum length"):
        engine.add_request("long2", [1, 2, 3], SamplingParams(max_new_tokens=30))
    with pytest.raises(MaxError, match="outside the vocabulary"):
        engine.add_request("vocab", [1, 10**9], SamplingParams())
    with pytest.raises(MaxError, match="top_p must be"):
        engine.add_request("p", [1, 2], SamplingParams(top_p=0.0))
    with pytest.raises(MaxError, match="prompt is empty"):
        engine.add_request("e", [], SamplingParams())
    assert not engine.has_unfinished()
