"""Gemma 3 against transformers' Gemma3ForCausalLM, float32, on tiny random checkpoints:
(1 + w) norms, four norms per block, scaled embeddings, local/global layers with their own
rope, query_pre_attn_scalar, soft-capping."""

import pytest

from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Gemma 3 as released: no soft-capping, default global rope, untied head.
        {"final_logit_softcapping": None, "rope_scaling": None, "tie_word_embeddings": False},
    ],
)
def test_matches_transformers(overrides, tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", {**TINY_CONFIGS["gemma3"], **overrides}, seed=6)
    assert_matches_transformers(path)


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["gemma3"], seed=7))
