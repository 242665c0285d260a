"""OLMo 2 against transformers, float32, on tiny random checkpoints: post-norms only, q/k
norms over the whole projection, with and without attention biases."""

import pytest

from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize("bias", [False, True])
def test_matches_transformers(bias, tmp_path):
    config = {**TINY_CONFIGS["olmo2"], "attention_bias": bias}
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "o", config, seed=3), tolerance=1e-5)


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "o", TINY_CONFIGS["olmo2"], seed=5))
