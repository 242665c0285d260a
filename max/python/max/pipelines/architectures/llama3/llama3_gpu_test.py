"""SmolLM2-135M-Instruct on a CUDA GPU: float32 gives the CPU's greedy tokens, bfloat16
answers coherently. Skipped without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import (
    PipelineConfig,
    SamplingParams,
    TextGenerator,
    build_engine,
    load_tokenizer,
    resolve_model,
)
from max.testing.engine_probes import greedy_tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [
    [1, 504, 2365, 6354, 16438, 30],
    [1, 378, 1050, 282, 15344, 28, 253, 2203, 1064, 2298, 28, 665, 253, 2373, 3419, 30, 378],
    [9519, 2113, 8571, 33, 65, 1341],
]


def _resolved(device: str, encoding: str):
    config = PipelineConfig(devices=device, quantization_encoding=encoding, max_length=2048, kv_cache_page_size=16)
    return resolve_model(config, register_all())


def test_float32_cuda_greedy_equals_cpu():
    cpu = greedy_tokens(build_engine(_resolved("cpu", "float32")), PROMPTS, 32)
    gpu = greedy_tokens(build_engine(_resolved("gpu", "float32")), PROMPTS, 32)
    assert gpu == cpu


def test_bfloat16_cuda_answers_coherently():
    resolved = _resolved("gpu", "bfloat16")
    engine = build_engine(resolved)
    assert engine.model.dtype == torch.bfloat16
    generator = TextGenerator(engine, load_tokenizer(resolved))
    (answer,) = generator.generate(
        ["What is the capital of France?"], SamplingParams(max_new_tokens=24, temperature=0.0), chat=True
    )
    print("bfloat16 answer:", answer.text)
    assert "Paris" in answer.text
