"""Structured outputs with speculation: each verified position's mask follows the matcher
through the drafts (then the matcher is rolled back), so constrained requests, greedy or
seeded, emit exactly what they emit without speculation, with right, wrong and n-gram
drafts, beside free requests; the matcher ends where the emitted tokens put it."""

import json

import pytest

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.pipelines.lib.sampling.structured_output import GrammarBackend, StructuredOutput
from max.pipelines.lib.speculative.draft_masks import draft_bitmasks
from max.pipelines.lib.speculative.oracle_proposer import OracleProposer
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
    "required": ["kind", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=3, with_tokenizer=True)


def _engine(path, proposer=None, speculative=None):
    config = PipelineConfig(
        model_path=str(path), quantization_encoding="float32", kv_cache_page_size=4, max_length=256,
        max_batch_size=8, speculative_config=speculative,
    )  # fmt: skip
    return build_engine(resolve_model(config, register_all()), proposer=proposer)


def _run(engine, requests):
    tokens = {rid: [] for rid, _, _ in requests}
    finish = {}
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finish[out.request_id] = out.finish_reason
    assert engine.kv_cache.pool.num_in_use == 0
    return tokens, finish


def _requests():
    constraints = [
        StructuredOutput("regex", r"([0-9]{3}-[a-z]{2} ){2,4}"),
        StructuredOutput("choice", json.dumps(["yes", "no", "maybe"])),
        StructuredOutput("json_schema", json.dumps(SCHEMA)),
    ]
    requests = [("free", [1, 50, 60, 50, 60], SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True))]
    for i, c in enumerate(constraints):
        requests.append((f"greedy-{i}", [1, 70 + i, 80], SamplingParams(max_new_tokens=40, temperature=0.0, structured_output=c)))
        requests.append((f"seeded-{i}", [1, 90 + i, 80], SamplingParams(max_new_tokens=40, temperature=1.0, seed=i, structured_output=c)))
    return requests


def test_constrained_requests_speculate_and_match(checkpoint):
    requests = _requests()
    plain = _run(_engine(checkpoint), requests)
    refs = {rid: list(prompt) + plain[0][rid] for rid, prompt, _ in requests}
    for proposer in (OracleProposer(refs, 1000), OracleProposer(refs, 1000, corrupt_every=2), None):
        engine = _engine(checkpoint, proposer, NGRAM)
        assert _run(engine, requests) == plain
        assert engine.stats().spec_decode.num_drafts > 0


def test_draft_masks_follow_the_drafts_and_roll_back():
    from transformers import AutoTokenizer

    from max.testing.tiny_tokenizer import tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    grammar = GrammarBackend(tok, len(tok), [tok.eos_token_id])
    matcher = grammar.matcher(StructuredOutput("regex", "abc(d|e)"))
    drafts = tok.encode("ab", add_special_tokens=False) + tok.encode("z", add_special_tokens=False)
    before = grammar.fill_bitmask([matcher])[0]
    masks = draft_bitmasks(grammar, matcher, drafts)
    assert masks.shape[0] == len(drafts) + 1
    assert bool((masks[0] == before).all())  # position 0: the matcher as it is
    assert not bool((masks[1] == before).all())  # after the first draft: another state
    # The matcher is where it was: the same mask, and it still takes the whole answer.
    assert bool((grammar.fill_bitmask([matcher])[0] == before).all())
    assert all(matcher.consume_token(t) for t in tok.encode("abcd", add_special_tokens=False))
