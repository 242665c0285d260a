"""Mistral against transformers, float32, on tiny random checkpoints: a sliding window on
every layer (prompts cross it), and none (v0.3)."""

import pytest

from max.testing.parity import assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS


@pytest.mark.parametrize("window", [6, None])
def test_matches_transformers(window, tmp_path):
    config = {**TINY_CONFIGS["mistral"], "sliding_window": window}
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "m", config, seed=3), tolerance=1e-5)


def test_window_changes_the_logits(tmp_path):
    """The window is applied: past it, the same weights give other logits than without."""
    from max.testing.engine_probes import prompt_logits
    from max.testing.parity import PROMPTS, build_tiny_engine

    windowed = write_tiny_checkpoint(tmp_path / "w", TINY_CONFIGS["mistral"], seed=3)
    full = write_tiny_checkpoint(tmp_path / "f", {**TINY_CONFIGS["mistral"], "sliding_window": None}, seed=3)
    a, b = prompt_logits(build_tiny_engine(windowed), PROMPTS[1]), prompt_logits(build_tiny_engine(full), PROMPTS[1])
    assert (a[:6] - b[:6]).abs().max() < 1e-5 < (a[6:] - b[6:]).abs().max()


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "m", TINY_CONFIGS["mistral"], seed=5))
