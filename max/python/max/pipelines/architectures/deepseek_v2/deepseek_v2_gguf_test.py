"""DeepSeek-V2 from GGUF files as llama.cpp writes them (experts stacked, kv_b split into a
per-head transposed k_b and v_b, latent attention described as one KV head, YaRN's mscale
as a log multiplier, group-limited routing): float32 logits equal to the safetensors load of
the weights the file holds."""

import pytest

from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_gguf_models import assert_gguf_matches_reference

# Lite's shape: a low-rank-free query, greedy routing; kv_b rows of 32 (whole Q8_0 blocks).
_LITE = {"topk_method": "greedy", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "qk_nope_head_dim": 32}


@pytest.mark.parametrize("matrix_type", ["F32", "F16", "Q8_0"])
def test_gguf_matches_its_weights_in_safetensors(matrix_type, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "d", TINY_CONFIGS["deepseek_v2"], seed=3)
    assert_gguf_matches_reference(path, tmp_path, matrix_type)


def test_gguf_of_the_lite_shape_with_a_low_rank_query(tmp_path):
    config = {**TINY_CONFIGS["deepseek_v2"], **_LITE, "q_lora_rank": 32}
    assert_gguf_matches_reference(write_tiny_checkpoint(tmp_path / "d", config, seed=4), tmp_path, "Q8_0")
