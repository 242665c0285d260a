"""The tiny random DeepSeek-V2 checkpoint on a CUDA GPU: float32 gives the CPU's logits and
greedy tokens (decode through the absorbed MLA kernel, replayed in CUDA graphs; prefill
eager and chunked, or a lone request's replayed in a graph), bfloat16 stays close.
Skipped without a GPU (CI has none).

    PYTHONPATH=max/python:max/kernels/python python3 -m pytest -q \\
        max/python/max/pipelines/architectures/deepseek_v2/deepseek_v2_gpu_test.py
"""

import pytest
import torch

from max.testing.engine_probes import greedy_tokens
from max.testing.parity import PROMPTS, assert_gpu_matches_cpu, build_tiny_engine
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 24}], ids=["lite_query", "low_rank_query"])
def test_gpu_matches_cpu(overrides, tmp_path):
    config = {**TINY_CONFIGS["deepseek_v2"], **overrides}
    assert_gpu_matches_cpu(write_tiny_checkpoint(tmp_path / "deepseek_v2", config, seed=3))


def test_lone_prefill_replays_a_graph_and_matches_cpu(tmp_path):
    """One request at a time: its prefill replays a graph (every row absorbed), with the
    CPU's tokens (a prompt shorter than a page, one over several pages)."""
    path = write_tiny_checkpoint(tmp_path / "deepseek_v2", TINY_CONFIGS["deepseek_v2"], seed=4)
    settings = dict(quantization_encoding="float32", kv_cache_page_size=16, max_batch_size=8)
    cpu, gpu = build_tiny_engine(path, devices="cpu", **settings), build_tiny_engine(path, devices="gpu", **settings)
    for prompt in (PROMPTS[0], PROMPTS[3]):
        assert greedy_tokens(gpu, [prompt], 8) == greedy_tokens(cpu, [prompt], 8)
    assert gpu.runner.num_prefill_replays == 2
