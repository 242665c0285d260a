"""Constrained decoding: masks change only constrained rows; constrained requests produce
text of their grammar, batched with free ones (which stay token for token what they are
alone), synchronously and with asynchronous scheduling; bad specs are refused by name."""

import json
import re

import pytest
import torch

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams, build_engine, resolve_model
from max.pipelines.lib.sampling.sampler import SamplingBatch, sample
from max.pipelines.lib.sampling.structured_output import (
    GrammarBackend,
    StructuredOutput,
    _is_byte_level_vocab,
    apply_token_bitmask,
    grammar_for,
)
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_tokenizer import tokenizer_dir


def test_bitmask_leaves_other_rows_bit_exact():
    torch.manual_seed(0)
    logits = torch.randn(4, 70)
    bitmask = torch.zeros(2, 3, dtype=torch.int32)
    bitmask[0, 0] = 1 << 5  # row 1 may take token 5 only
    bitmask[1, 2] = 1 << 1  # row 3 may take token 65 only
    out = apply_token_bitmask(logits, bitmask, [1, 3])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert torch.isfinite(out[1]).sum() == 1 and out[1, 5] == logits[1, 5]
    assert torch.isfinite(out[3]).sum() == 1 and out[3, 65] == logits[3, 65]
    assert torch.isfinite(logits).all()  # the input is left alone


def test_sampler_draws_only_allowed_tokens():
    logits = torch.zeros(3, 40)
    bitmask = torch.tensor([[(1 << 7) | (1 << 9)]], dtype=torch.int32)
    bitmask = torch.cat([bitmask, torch.zeros(1, 1, dtype=torch.int32)], dim=1)
    params = [SamplingParams(temperature=1.0)] * 3
    for seed in range(20):
        batch = SamplingBatch(params, [seed] * 3, [0] * 3, (), (), token_bitmask=bitmask, bitmask_rows=[2])
        assert sample(logits, batch).tokens[2] in (7, 9)


@pytest.mark.parametrize(
    "constraint, words",
    [
        (StructuredOutput("json_schema", json.dumps({"type": "object", "dependentSchemas": {"a": {}}})), "dependentSchemas"),
        (StructuredOutput("regex", "(?<=a)b"), "look-around"),
        (StructuredOutput("json_schema", json.dumps({"type": "objekt"})), "objekt"),
    ],
)
def test_unsupported_specs_are_refused_by_name(constraint, words):
    with pytest.raises(MaxError, match=words):
        grammar_for(constraint)


def test_strict_closes_objects():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    strict = grammar_for(StructuredOutput("json_schema", json.dumps(schema), strict=True))
    assert strict.count('"additionalProperties":false') == 2
    loose = grammar_for(StructuredOutput("json_schema", json.dumps(schema)))
    assert "additionalProperties" not in loose


@pytest.mark.parametrize("nested_decoder", [False, True])
def test_byte_level_tokens_are_their_bytes(nested_decoder):
    """'Ġ' is a space to llguidance, whether the decoder is ByteLevel or (as transformers 5.17
    converts GGUF tokenizers) a Sequence[ByteFallback, Fuse, Replace, ByteLevel]."""
    from tokenizers import decoders
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    if nested_decoder:
        tok.backend_tokenizer.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("\u2581", " "), decoders.ByteLevel()]
        )
    backend = GrammarBackend(tok, len(tok), [tok.eos_token_id])
    ids = tok.encode('{"a": "b c"}', add_special_tokens=False)
    assert 'Ġ"' in tok.convert_ids_to_tokens(ids)
    assert b"".join(backend.tokenizer.decode_bytes([i]) for i in ids) == b'{"a": "b c"}'
    matcher = backend.matcher(StructuredOutput("json_object"))
    assert matcher.try_consume_tokens(ids) == len(ids) and not matcher.is_error(), matcher.get_error()


def test_sentencepiece_vocab_is_not_byte_level():
    vocab = {"<unk>": 0, "<0x20>": 1, "\u2581a": 2, "\u2581b": 3, "a": 4, "\u0120": 5}
    assert not _is_byte_level_vocab({"type": "BPE", "vocab": vocab})
    assert _is_byte_level_vocab({"type": "BPE", "vocab": {"\u0120": 0, "a": 1, "\u0120a": 2, "\u010a": 3}})
    assert not _is_byte_level_vocab({"type": "Unigram", "vocab": [["\u0120", 0.0]]})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=3, with_tokenizer=True)


def _engine(path, asynchronous=False, devices="cpu"):
    config = PipelineConfig(
        model_path=str(path), devices=devices, quantization_encoding="float32", kv_cache_page_size=4,
        max_length=256, max_batch_size=8,
    )  # fmt: skip
    engine = build_engine(resolve_model(config, register_all()))
    if devices == "cpu":
        engine.async_scheduling = asynchronous
    return engine


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
    return tokens, finish


REGEX = r"[0-9]{3}-[a-z]{2}"
SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
    "required": ["kind", "ok"],
    "additionalProperties": False,
}


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "asynchronous, devices",
    # On the GPU: the Triton sampler, CUDA graphs and asynchronous scheduling (the default).
    [(False, "cpu"), (True, "cpu"), pytest.param(True, "gpu", marks=GPU)],
)
def test_constrained_and_free_requests_in_one_batch(checkpoint, asynchronous, devices):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    engine = _engine(checkpoint, asynchronous, devices)
    assert engine.async_scheduling == asynchronous
    free = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    alone, _ = _run(engine, [("free", [1, 50, 60], free)])
    constraints = {
        "regex": StructuredOutput("regex", REGEX),
        "choice": StructuredOutput("choice", json.dumps(["yes", "no", "maybe"])),
        "schema": StructuredOutput("json_schema", json.dumps(SCHEMA)),
    }
    requests = [("free", [1, 50, 60], free)]
    for name, c in constraints.items():
        for seed in range(2):
            params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed, structured_output=c)
            requests.append((f"{name}-{seed}", [1, 70 + seed, 80], params))
    tokens, finish = _run(engine, requests)
    assert tokens["free"] == alone["free"]
    for name in constraints:
        for seed in range(2):
            rid = f"{name}-{seed}"
            text = tok.decode(tokens[rid], skip_special_tokens=True)
            assert finish[rid] == "stop", (rid, text)
            if name == "regex":
                assert re.fullmatch(REGEX, text), text
            elif name == "choice":
                assert text in ("yes", "no", "maybe"), text
            else:
                value = json.loads(text)
                assert value["kind"] in ("cat", "dog") and isinstance(value["ok"], bool), text
    assert engine.kv_cache.pool.num_in_use == 0


def test_engine_without_tokenizer_refuses_constraints(tmp_path):
    path = write_tiny_checkpoint(tmp_path, llama_config(), seed=3)
    config = PipelineConfig(model_path=str(path), kv_cache_page_size=4, max_length=64, skip_tokenizer_init=True)
    engine = build_engine(resolve_model(config, register_all()))
    with pytest.raises(MaxError, match="tokenizer"):
        engine.add_request("r", [1, 2], SamplingParams(structured_output=StructuredOutput("regex", "a+")))
