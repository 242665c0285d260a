"""gpt-oss against transformers' GptOssForCausalLM, computing in float32, on tiny random
checkpoints in both weight formats (bfloat16 safetensors with stacked experts, as
unsloth/gpt-oss-20b-BF16; OpenAI's MXFP4 experts, decoded on load): attention sinks,
q/k/v/o biases, sliding-window layers between full ones (prompts longer than the window),
YaRN, and routed experts with biases and the clamped SwiGLU."""

import pytest
import torch

from max.testing.mxfp4_checkpoints import write_mxfp4_experts
from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

CONFIG = TINY_CONFIGS["gpt_oss"]


@pytest.mark.parametrize("weights", ["bfloat16", "mxfp4"])
def test_matches_transformers(weights, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", CONFIG, seed=3, dtype=torch.bfloat16 if weights == "bfloat16" else torch.float32)
    if weights == "mxfp4":
        write_mxfp4_experts(path)
    assert_matches_transformers(path, steps=12, tolerance=1e-5)


def test_batching_changes_nothing(tmp_path):
    # Every layer routes to experts and has sinks; prompts cross the window of 6.
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "m", CONFIG, seed=5))
