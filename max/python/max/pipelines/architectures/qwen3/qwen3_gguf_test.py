"""Qwen3 and Qwen3-MoE from GGUF files as llama.cpp writes them (the head width as
key_length, YaRN as scaling keys, tied embeddings as a missing `output`; each layer's experts
stacked into one tensor per projection, and no key for the renormalized routing weights that
llama.cpp always applies to qwen3moe): float32 logits and greedy tokens equal transformers'
on the weights the file holds."""

import pytest

from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_gguf_models import assert_gguf_matches_transformers, write_gguf_and_reference

# Qwen3-30B-A3B's shape: every layer sparse (llama.cpp knows no dense qwen3moe layer), top-k
# weights renormalized, head_dim (32) wider than hidden / heads (16).
_GGUF_MOE = {**TINY_CONFIGS["qwen3_moe"], "decoder_sparse_step": 1, "mlp_only_layers": [], "head_dim": 32}


@pytest.mark.parametrize("matrix_type", ["F32", "Q8_0"])
def test_moe_gguf_matches_transformers(matrix_type, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", _GGUF_MOE, seed=3)
    assert_gguf_matches_transformers(path, tmp_path, matrix_type)


def test_dense_gguf_matches_transformers(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "d", TINY_CONFIGS["qwen3"], seed=3)
    assert_gguf_matches_transformers(path, tmp_path, "Q8_0")


def test_moe_with_dense_layers_has_no_gguf_form(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["qwen3_moe"], seed=3)
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.\w+_proj\.weight: .* has no tensor"):
        write_gguf_and_reference(path, tmp_path / "m.gguf")
