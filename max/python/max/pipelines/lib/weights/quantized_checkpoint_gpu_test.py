"""Pre-quantized tiny checkpoints on a CUDA GPU (the int4 Triton GEMV / GEMM, the FP8 kernels
with the checkpoint's codes, CUDA-graph decode) against the CPU's float32 run of the same
checkpoint (its exact dequantization): bfloat16 logits point the same way (cosine similarity
of each position's logits above 0.99) and the int4 layers stay packed on the card.

Run: `PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q max/python/max/pipelines/lib/weights/quantized_checkpoint_gpu_test.py`
"""

import pytest
import torch

from max.nn.fp8_linear import Fp8Linear
from max.nn.int4_linear import Int4Linear
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.parity import PROMPTS
from max.testing.quantized_checkpoints import quantize_tiny_checkpoint
from max.testing.quantized_parity import (
    assert_same_direction,
    device_engine,
    layers_of,
    write_quantizable_checkpoint,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    return write_quantizable_checkpoint(tmp_path_factory.mktemp("float"))


@pytest.mark.parametrize(("kind", "group"), [("gptq-sym-actorder", 32), ("gptq-asym", 128), ("awq", 64)])
def test_int4_checkpoints_on_the_gpu_follow_the_cpu(float_checkpoint, tmp_path, kind, group):
    quantized, _ = quantize_tiny_checkpoint(float_checkpoint, tmp_path, kind, group)
    cpu = device_engine(quantized, "cpu")
    gpu = device_engine(quantized, "gpu", quantization_encoding="bfloat16")
    held = layers_of(gpu, Int4Linear)
    assert len(held) == 8 and all(m.qweight.is_cuda for m in held)
    assert_same_direction(gpu, cpu)
    # float32 on the GPU: the same product as the CPU's up to the float32 sums' order.
    gpu32 = device_engine(quantized, "gpu", quantization_encoding="float32")
    for prompt in PROMPTS:
        torch.testing.assert_close(prompt_logits(gpu32, prompt).cpu(), prompt_logits(cpu, prompt), rtol=1e-3, atol=1e-3)
    assert greedy_tokens(gpu32, PROMPTS, 8) == greedy_tokens(cpu, PROMPTS, 8)
    assert gpu32.runner.num_replays > 0  # decode steps replayed CUDA graphs


@pytest.mark.parametrize("kind", ["ct-channel", "ct-tensor", "fbgemm", "fp8-block"])
def test_fp8_checkpoints_on_the_gpu_follow_the_cpu(float_checkpoint, tmp_path, kind):
    from max_kernels.fp8 import fp8_supported

    quantized, _ = quantize_tiny_checkpoint(float_checkpoint, tmp_path, kind)
    cpu = device_engine(quantized, "cpu")
    gpu = device_engine(quantized, "gpu", quantization_encoding="bfloat16")
    assert bool(layers_of(gpu, Fp8Linear)) == fp8_supported(torch.device("cuda"))
    assert_same_direction(gpu, cpu)


def test_a_4_bit_gguf_stays_int4_on_the_gpu(float_checkpoint, tmp_path):
    from max.testing.tiny_gguf import write_llama_gguf

    gguf = write_llama_gguf(float_checkpoint, tmp_path / "tiny-Q4_1.gguf", "Q4_1")
    cpu = device_engine(gguf, "cpu", quantization_encoding="float32")
    gpu = device_engine(gguf, "gpu", quantization_encoding="q4_1")
    assert len(layers_of(gpu, Int4Linear)) == 10  # 8 decoder layers, the embedding's table, the head
    assert_same_direction(gpu, cpu)


def test_int4_on_load_of_a_float_checkpoint(float_checkpoint):
    gpu = device_engine(float_checkpoint, "gpu", quantization="int4")
    assert len(layers_of(gpu, Int4Linear)) == 8
    assert greedy_tokens(gpu, PROMPTS, 4)  # runs prefill and graph-replayed decode
