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


def test_packed_mxfp4_experts_match_the_decoded_ones(tmp_path, monkeypatch):
    """The experts kept packed (the GPU's path, here through the kernels' torch reference)
    against the same checkpoint decoded to bfloat16 on load: the reference decodes each
    expert to exactly the weights the decoded path holds, so the logits are the same."""
    from max.nn.expert_weights import Mxfp4ExpertWeights
    from max.pipelines.lib.model.pipeline_model import PipelineModel
    from max.testing.engine_probes import greedy_tokens, prompt_logits
    from max.testing.parity import PROMPTS, build_tiny_engine

    path = write_mxfp4_experts(write_tiny_checkpoint(tmp_path / "m", CONFIG, seed=3))
    decoded = build_tiny_engine(path, quantization_encoding="bfloat16")

    def packed(self):
        self.model_config.moe.expert_weights = Mxfp4ExpertWeights.name

    monkeypatch.setattr(PipelineModel, "choose_expert_weights", packed)
    engine = build_tiny_engine(path, quantization_encoding="bfloat16")
    moe = engine.model.model.layers[0].mlp
    assert moe.experts_gate_up_blocks.dtype == torch.uint8 and not hasattr(moe, "experts_gate_up")
    for prompt in PROMPTS:
        assert torch.equal(prompt_logits(engine, prompt), prompt_logits(decoded, prompt))
    assert greedy_tokens(engine, PROMPTS, 8) == greedy_tokens(decoded, PROMPTS, 8)
