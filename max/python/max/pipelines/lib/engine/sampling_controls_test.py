"""Request controls the API exposes, on a tiny engine: `logit_bias` shifts a request's
logits (its neighbours' draws are untouched), and `--scheduling-policy priority` admits
waiting requests by their `priority` (lower first) where fcfs keeps arrival order."""

import pytest

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

PROMPT = [1, 50, 60, 70, 80]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=5)


def _engine(path, **overrides):
    settings = dict(model_path=str(path), kv_cache_page_size=4, max_length=64, **overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _run(engine, requests):
    """Adds every (id, params) before the first step; returns tokens by id and the order
    in which the requests produced their first token."""
    for rid, params in requests:
        engine.add_request(rid, PROMPT, params)
    tokens, first = {rid: [] for rid, _ in requests}, []
    while engine.has_unfinished():
        for out in engine.step():
            if out.new_token_ids and not tokens[out.request_id]:
                first.append(out.request_id)
            tokens[out.request_id].extend(out.new_token_ids)
    return tokens, first


def _greedy(**extra):
    return SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True, **extra)


def test_logit_bias_moves_the_draw_and_spares_the_rest(checkpoint):
    engine = _engine(checkpoint)
    plain = _run(engine, [("plain", _greedy())])[0]["plain"]
    tokens, _ = _run(engine, [("forced", _greedy(logit_bias={7: 100.0})), ("plain", _greedy()),
                              ("banned", _greedy(logit_bias={plain[0]: -100.0}))])  # fmt: skip
    assert tokens["forced"] == [7, 7, 7, 7]
    assert tokens["plain"] == plain
    assert tokens["banned"][0] != plain[0]


def test_logit_bias_out_of_range_is_refused(checkpoint):
    engine = _engine(checkpoint)
    with pytest.raises(MaxError, match="outside the vocabulary"):
        engine.add_request("x", PROMPT, _greedy(logit_bias={10**9: 1.0}))
    with pytest.raises(MaxError, match="between -100 and 100"):
        engine.add_request("y", PROMPT, _greedy(logit_bias={3: 101.0}))


@pytest.mark.parametrize(("policy", "order"), [("fcfs", ["a", "b", "c", "d"]), ("priority", ["b", "d", "a", "c"])])
def test_priority_policy_admits_lower_numbers_first(checkpoint, policy, order):
    engine = _engine(checkpoint, max_batch_size=1, scheduling_policy=policy)
    requests = [("a", _greedy(priority=5)), ("b", _greedy(priority=0)), ("c", _greedy(priority=5)), ("d", _greedy(priority=1))]
    assert _run(engine, requests)[1] == order
