"""Qwen2.5-VL on a GPU: prompts with images give the CPU's float32 logits and greedy tokens
(Triton kernels, per-step M-RoPE tables, eager image steps next to graph-replayed decode,
asynchronous scheduling, chunked prefill), and bfloat16 stays close to float32. Skipped
without a GPU (CI has none); run through the device tool."""

import pytest
import torch

from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.parity import build_tiny_engine
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.vl_prompts import MULTIMODAL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("qwen2_5_vl"), TINY_CONFIGS["qwen2_5_vl"], seed=3)


def _engine(path, devices, **overrides):
    settings = dict(devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_batch_size=8)
    settings.update(overrides)
    return build_tiny_engine(path, **settings)


def test_image_prompts_match_the_cpu_in_float32(checkpoint):
    cpu, gpu = _engine(checkpoint, "cpu"), _engine(checkpoint, "gpu")
    assert gpu.runner.graph_batch_sizes and gpu.async_scheduling
    for ids, images in MULTIMODAL:
        torch.testing.assert_close(prompt_logits(gpu, ids, images), prompt_logits(cpu, ids, images), rtol=1e-4, atol=1e-4)
    prompts, images = [p for p, _ in MULTIMODAL], [i for _, i in MULTIMODAL]
    expected = greedy_tokens(cpu, prompts, 16, images)
    assert greedy_tokens(gpu, prompts, 16, images) == expected
    assert gpu.runner.num_replays > 0  # the decode steps after the images replayed graphs
    chunked = _engine(checkpoint, "gpu", max_num_batched_tokens=7)
    assert greedy_tokens(chunked, prompts, 16, images) == expected


def test_bfloat16_stays_close_to_float32(checkpoint):
    reference = _engine(checkpoint, "cpu")
    bf16 = _engine(checkpoint, "gpu", quantization_encoding="bfloat16")
    for ids, images in MULTIMODAL:
        expected = torch.log_softmax(prompt_logits(reference, ids, images), -1)
        got = torch.log_softmax(prompt_logits(bf16, ids, images).float(), -1)
        kl = torch.nn.functional.kl_div(got, expected, log_target=True, reduction="batchmean")
        assert kl < 1e-2, kl
