"""`hf_overrides` reaching the engine: a tiny embedding checkpoint whose config.json has no
Matryoshka fields refuses `dimensions`; with `{"matryoshka_dimensions": [16, 32]}` merged
into its config the engine returns the first 16 dimensions, renormalized (float32, CPU), and
refuses a size the overrides do not list."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib import SamplingParams
from max.pipelines.lib.pooling.pooling_params import PoolingParams
from max.testing.parity import build_tiny_engine
from max.testing.tiny_embedding_model import write_embedding_model

PROMPTS = [[1, 15, 300, 7, 2048], [1, 9000, 17], list(range(500, 520))]


def _embed(engine, dimensions: int | None = None) -> np.ndarray:
    """Each prompt's embedding, the prompts batched together."""
    params = SamplingParams(pooling=PoolingParams(dimensions))
    for i, ids in enumerate(PROMPTS):
        engine.add_request(f"{dimensions}-{i}", ids, params)
    vectors: dict[str, list[float]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.embedding is not None and out.finished
            vectors[out.request_id] = out.embedding
    return np.array([vectors[f"{dimensions}-{i}"] for i in range(len(PROMPTS))])


def test_matryoshka_dimensions_from_hf_overrides(tmp_path):
    folder = write_embedding_model(tmp_path / "st", "mean")
    plain = build_tiny_engine(folder)
    assert plain.pooling.matryoshka is None
    with pytest.raises(MaxError, match="matryoshka"):
        plain.add_request("x", PROMPTS[0], SamplingParams(pooling=PoolingParams(16)))
    full = _embed(plain)
    assert full.shape == (3, 64)

    engine = build_tiny_engine(folder, hf_overrides={"matryoshka_dimensions": [16, 32]})
    assert engine.pooling.matryoshka == (16, 32)
    short = _embed(engine, 16)
    expected = torch.nn.functional.normalize(torch.tensor(full[:, :16]), dim=-1).numpy()
    assert short.shape == (3, 16)
    np.testing.assert_allclose(short, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_embed(engine), full, rtol=0, atol=1e-6)  # the full size as before
    with pytest.raises(MaxError, match="16, 32"):
        engine.add_request("y", PROMPTS[0], SamplingParams(pooling=PoolingParams(24)))
