"""Rope frequency schedules against transformers' own, and the rotation itself."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from max.errors import MaxError
from max.nn.rotary_embedding import RotaryEmbedding, rope_frequencies, rotate_half

CASES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 128,
    },
    "yarn_mscale": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 40.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "beta_fast": 32,
        "beta_slow": 1,
        "original_max_position_embeddings": 256,
    },
    # gpt-oss's: no truncation of the correction range.
    "yarn_untruncated": {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_frequencies_match_transformers(name):
    params = dict(CASES[name])
    config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=1024,
        rope_parameters=dict(params),
    )
    fn = ROPE_INIT_FUNCTIONS[params["rope_type"]] if params["rope_type"] != "default" else None
    if fn is None:
        base = config.rope_parameters["rope_theta"]
        expected = 1.0 / (base ** (torch.arange(0, 32, 2, dtype=torch.int64).float() / 32))
        expected_scale = 1.0
    else:
        expected, expected_scale = fn(config, "cpu")
    ours, scale = rope_frequencies(config.rope_parameters, 32, 1024)
    torch.testing.assert_close(ours, expected.float(), rtol=0, atol=0)
    assert scale == pytest.approx(expected_scale)


def test_rotation_preserves_norm_and_relative_position():
    rope = RotaryEmbedding(16, {"rope_type": "default", "rope_theta": 100.0}, 64, 64)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 16, generator=g)
    k = torch.randn(1, 2, 16, generator=g)
    dots = []
    for shift in (0, 5):
        pq, _ = rope(q, q, torch.tensor([3 + shift]))
        _, pk = rope(k, k, torch.tensor([1 + shift]))
        dots.append((pq * pk).sum())
        torch.testing.assert_close(pq.norm(), q.norm())
    # Scores depend only on the distance between positions.
    torch.testing.assert_close(dots[0], dots[1])


def test_rotate_half():
    x = torch.arange(4.0)
    assert rotate_half(x).tolist() == [-2.0, -3.0, 0.0, 1.0]


def test_unknown_rope_type_is_a_clear_error():
    with pytest.raises(MaxError, match="rope type 'dynamic' is not supported"):
        rope_frequencies({"rope_type": "dynamic", "rope_theta": 1.0}, 8, 16)


_LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "original_max_position_embeddings": 64,
    "short_factor": [1.0 + 0.05 * i for i in range(12)],
    "long_factor": [1.5 + 0.3 * i for i in range(12)],
}


@pytest.mark.parametrize("served_len", [64, 65, 1024])
@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_longrope_factors_and_scale_match_transformers(served_len, partial):
    """Short factors while the served length fits the original context, long beyond it; the
    attention factor from max_position_embeddings / original; a partial rotary width."""
    from transformers import Phi3Config

    params = dict(_LONGROPE, partial_rotary_factor=partial)
    if partial == 1.0:
        params["short_factor"] = params["short_factor"] + [1.0] * 4
        params["long_factor"] = params["long_factor"] + [2.0] * 4
    config = Phi3Config(
        hidden_size=128, num_attention_heads=4, max_position_embeddings=1024, rope_parameters=dict(params),
        original_max_position_embeddings=64, partial_rotary_factor=partial,
    )  # fmt: skip
    expected, expected_scale = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=served_len)
    ours, scale = rope_frequencies(config.rope_parameters, 32, 1024, served_len)
    torch.testing.assert_close(ours, expected.float(), rtol=0, atol=0)
    assert scale == pytest.approx(expected_scale) and scale > 1.0


def test_longrope_factor_count_must_match_the_rotary_width():
    with pytest.raises(MaxError, match="short_factor has 12 entries; the rotary width 32 needs 16"):
        rope_frequencies(_LONGROPE, 32, 1024, 64)
