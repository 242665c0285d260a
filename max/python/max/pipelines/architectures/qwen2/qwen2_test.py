"""Qwen2 against transformers' Qwen2ForCausalLM, float32, on tiny random checkpoints:
q/k/v biases and sliding-window layers; tied and untied heads."""

import pytest

from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True, "use_sliding_window": False}])
def test_matches_transformers(overrides, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", {**TINY_CONFIGS["qwen2"], **overrides}, seed=1)
    assert_matches_transformers(path)


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["qwen2"], seed=2))
