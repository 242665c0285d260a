"""Tensor parallelism on GPUs over NCCL: with 2 ranks, CUDA graphs (collectives captured in
them) and asynchronous scheduling, every tiny architecture gives the single-GPU greedy tokens
in float32. Skipped without 2 GPUs (run through the device tool, kind nvidia-h200-x2)."""

import pytest
import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")

# Vision-language models and DeepSeek-V2 refuse tensor parallelism (tensor_parallel_test.py
# checks that).
TEXT_CONFIGS = sorted(
    name for name, config in TINY_CONFIGS.items() if "vision_config" not in config and name != "deepseek_v2"
)
PROMPTS = [[1, 50, 60, 70], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 400]]


def _tokens(path, devices: str) -> list[list[int]]:
    config = PipelineConfig(
        model_path=str(path), devices=devices, quantization_encoding="float32", kv_cache_page_size=16, max_length=256, max_batch_size=8
    )
    engine = build_engine(resolve_model(config, register_all()))
    try:
        assert engine.runner.graph_batch_sizes and engine.async_scheduling
        return greedy_tokens(engine, PROMPTS, 16)
    finally:
        engine.close()


@pytest.mark.parametrize("name", TEXT_CONFIGS)
def test_two_gpus_give_the_single_gpu_tokens(name, tmp_path):
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS[name], seed=3)
    assert _tokens(path, "gpu:0,1") == _tokens(path, "gpu:0")
