"""GGUF files on a CUDA GPU kept quantized (the int8 and int4 Triton GEMV / GEMM, CUDA-graph
decode) against the CPU's float32 run of the same file (its exact decoding): Q8_0 in int8,
a 4-bit file's wider layers in int8 beside int4, embeddings and heads likewise; bfloat16
logits point the same way (cosine similarity of each position's logits above 0.99).

Run: `PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/python/max/pipelines/lib/weights/gguf_gpu_test.py`
"""

import pytest
import torch

from max.nn.int4_linear import Int4Linear
from max.nn.int8_linear import Int8Linear
from max.testing.engine_probes import greedy_tokens
from max.testing.parity import PROMPTS
from max.testing.quantized_parity import (
    assert_same_direction,
    layers_of,
    quantized_engine,
    write_quantizable_checkpoint,
)
from max.testing.tiny_gguf import write_llama_gguf

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    return write_quantizable_checkpoint(tmp_path_factory.mktemp("float"))


def _engine(path, devices, **overrides):
    return quantized_engine(path, devices=devices, **{"kv_cache_page_size": 16, "max_batch_size": 8, **overrides})


def test_q8_0_stays_int8_on_the_gpu(float_checkpoint, tmp_path):
    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    cpu = _engine(gguf, "cpu", quantization_encoding="float32")
    gpu = _engine(gguf, "gpu", quantization_encoding="q8_0")
    held = layers_of(gpu, Int8Linear)
    # 8 decoder layers, the LM head and the embedding's table.
    assert len(held) == 10 and all(m.codes.is_cuda for m in held)
    assert_same_direction(gpu, cpu)
    assert all(len(t) == 8 for t in greedy_tokens(gpu, PROMPTS, 8))
    assert gpu.runner.num_replays > 0  # decode steps replayed CUDA graphs


def test_wider_layers_of_a_4_bit_file_are_int8_on_the_gpu(float_checkpoint, tmp_path):
    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q4_1.gguf", "Q4_1", {"ffn_down": "Q5_0"})
    cpu = _engine(gguf, "cpu", quantization_encoding="float32")
    gpu = _engine(gguf, "gpu", quantization_encoding="q4_1")
    assert len(layers_of(gpu, Int4Linear)) == 8 and len(layers_of(gpu, Int8Linear)) == 2
    assert_same_direction(gpu, cpu)
    assert greedy_tokens(gpu, PROMPTS, 4)  # runs prefill and graph-replayed decode
