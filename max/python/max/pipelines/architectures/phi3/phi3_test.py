"""Phi-3 against transformers, float32, on tiny random checkpoints: fused qkv and gate_up
weights, a sliding window on every layer, LongRoPE over part of each head, default rope."""

from max.testing.parity import PROMPTS, assert_batching_invariant, assert_matches_transformers
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

# transformers picks LongRoPE's factors by the length of the sequence at hand (short up to
# the original 16 positions, then long, re-prefilling the cache); we pick them once by the
# longest sequence served. They agree on sequences longer than the original context when
# serving past it, and on any sequence when serving within it.
_LONG_PROMPTS = [p for p in PROMPTS if len(p) > 16] + [list(range(3000, 3017))]
_WITHIN = {**TINY_CONFIGS["phi3"], "original_max_position_embeddings": 128}


def test_longrope_long_factors_match_transformers(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "p", TINY_CONFIGS["phi3"], seed=3)
    assert_matches_transformers(path, tolerance=1e-5, prompts=_LONG_PROMPTS)


def test_longrope_short_factors_match_transformers_within_the_original_context(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "p", _WITHIN, seed=3)
    assert_matches_transformers(path, tolerance=1e-5, max_length=128)


def test_default_rope_full_width_matches_transformers(tmp_path):
    """Phi-3-mini-4k's layout: no rope scaling, every channel rotated."""
    config = {**TINY_CONFIGS["phi3"], "rope_scaling": None, "partial_rotary_factor": 1.0}
    del config["original_max_position_embeddings"]
    assert_matches_transformers(write_tiny_checkpoint(tmp_path / "p", config, seed=4), tolerance=1e-5)


def test_batching_changes_nothing(tmp_path):
    assert_batching_invariant(write_tiny_checkpoint(tmp_path / "p", TINY_CONFIGS["phi3"], seed=5))
