"""Phi-3 from GGUF files as llama.cpp writes them (fused qkv and gate_up, LongRoPE factors as
tensors, partial rotary width, sliding window): float32 logits equal to the safetensors load
of the weights the file holds."""

import pytest

from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_gguf_models import assert_gguf_matches_reference


@pytest.mark.parametrize("matrix_type", ["F32", "F16", "Q8_0"])
def test_gguf_matches_its_weights_in_safetensors(matrix_type, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "p", TINY_CONFIGS["phi3"], seed=3)
    assert_gguf_matches_reference(path, tmp_path, matrix_type)


def test_gguf_without_rope_scaling(tmp_path):
    """Phi-3-mini-4k's layout: no LongRoPE tensors, no sliding window."""
    config = {**TINY_CONFIGS["phi3"], "rope_scaling": None, "partial_rotary_factor": 1.0, "sliding_window": None}
    del config["original_max_position_embeddings"]
    assert_gguf_matches_reference(write_tiny_checkpoint(tmp_path / "p", config, seed=4), tmp_path, "F32")
