"""Qwen3 and Qwen3-MoE against transformers, float32, on tiny random checkpoints: per-head
q/k norms, explicit head_dim, yarn rope, routed experts with dense layers in between."""

import pytest

from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize("name", ["qwen3", "qwen3_moe"])
def test_matches_transformers(name, tmp_path):
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / name, TINY_CONFIGS[name], seed=3))


def test_moe_without_renormalization(tmp_path):
    config = {**TINY_CONFIGS["qwen3_moe"], "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": []}
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "m", config, seed=4))


@pytest.mark.parametrize("name", ["qwen3", "qwen3_moe"])
def test_batching_changes_nothing(name, tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / name, TINY_CONFIGS[name], seed=5))
