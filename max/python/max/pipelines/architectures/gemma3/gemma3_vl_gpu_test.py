"""Gemma 3 with images on a GPU: prompts with images give the CPU's float32 logits and
greedy tokens (Triton kernels, the prefill kernel reading how far each image token sees
ahead, eager image steps next to graph-replayed decode, asynchronous scheduling, chunked
prefill that keeps images whole), and bfloat16 stays close to float32.
Skipped without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.gemma3_vl_prompts import CONFIG, MULTIMODAL
from max.testing.parity import PROMPTS, build_tiny_engine
from max.testing.tiny_checkpoints import write_tiny_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("gemma3_vl"), CONFIG, seed=3)


def _engine(path, devices, **overrides):
    settings = dict(devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_batch_size=8)
    settings.update(overrides)
    return build_tiny_engine(path, **settings)


def test_image_prompts_match_the_cpu_in_float32(checkpoint):
    cpu, gpu = _engine(checkpoint, "cpu"), _engine(checkpoint, "gpu")
    assert gpu.runner.graph_batch_sizes and gpu.async_scheduling
    for ids, images in MULTIMODAL:
        torch.testing.assert_close(prompt_logits(gpu, ids, images), prompt_logits(cpu, ids, images), rtol=1e-4, atol=1e-4)
    prompts = [p for p, _ in MULTIMODAL] + [PROMPTS[1]]
    images = [i for _, i in MULTIMODAL] + [[]]
    expected = greedy_tokens(cpu, prompts, 16, images)
    assert greedy_tokens(gpu, prompts, 16, images) == expected
    assert gpu.runner.num_replays > 0  # the decode steps after the images replayed graphs
    chunked = _engine(checkpoint, "gpu", max_num_batched_tokens=12)
    assert greedy_tokens(chunked, prompts, 16, images) == expected


def test_bfloat16_stays_close_to_float32(checkpoint):
    reference = _engine(checkpoint, "cpu")
    bf16 = _engine(checkpoint, "gpu", quantization_encoding="bfloat16")
    for ids, images in MULTIMODAL:
        expected = torch.log_softmax(prompt_logits(reference, ids, images), -1)
        got = torch.log_softmax(prompt_logits(bf16, ids, images).float(), -1)
        kl = torch.nn.functional.kl_div(got, expected, log_target=True, reduction="batchmean")
        assert kl < 1e-2, kl
