"""Embeddings through the engine, in float32 on the CPU, against sentence-transformers.

A tiny random qwen3 checkpoint wrapped as a sentence-transformers model (last-token, mean
and CLS pooling, normalized) is embedded by `SentenceTransformer.encode` and by our engine
(`--task auto` finds the Pooling module): within 1e-5. The engine's run mixes in what must
not change the vectors: prompts split over several chunks (a token budget of 8), a
generation request batched beside them, and the prefix cache (the same texts embedded
twice: last-token pooling reuses the cached pages, mean pooling recomputes them).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib import SamplingParams
from max.pipelines.lib.pooling.pooling_config import (
    PoolingConfig,
    read_pooling_config,
    resolve_task,
)
from max.pipelines.lib.pooling.pooling_params import PoolingParams
from max.testing.parity import build_tiny_engine
from max.testing.tiny_embedding_model import write_embedding_model

HIDDEN_64 = SimpleNamespace(hidden_size=64)  # a config's only field the pooling reads
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, twice, and then once more for luck.",
    "a",
    "Embeddings pool the final hidden states of every token of the prompt into one vector.",
]


def _engine_embeddings(
    engine,
    prompts: list[list[int]],
    tag: str,
    dimensions: int | None = None,
    cached: list[int] | None = None,
) -> np.ndarray:
    """Each prompt's embedding, run as one continuous batch beside a generation request
    (`cached` collects the prompt tokens the prefix cache held)."""
    params = SamplingParams(pooling=PoolingParams(dimensions))
    engine.add_request(
        f"{tag}-gen", prompts[1], SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True)
    )
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", ids, params)
    vectors: dict[str, list[float]] = {}
    generated: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            if out.embedding is not None:
                assert out.finished and not out.new_token_ids
                vectors[out.request_id] = out.embedding
                if cached is not None:
                    cached.append(out.num_cached_tokens)
            elif out.request_id == f"{tag}-gen":
                generated += out.new_token_ids
    assert len(generated) == 5  # the generation request ran in the same batches
    assert engine.stats().kv_pages_in_use == 0  # every request freed its pages
    return np.array([vectors[f"{tag}-{i}"] for i in range(len(prompts))])


@pytest.mark.parametrize("mode", ["last", "mean", "cls"])
def test_matches_sentence_transformers(tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    folder = write_embedding_model(tmp_path / "st", mode)
    reference = SentenceTransformer(str(folder), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS))
    prompts = [reference.tokenizer(t)["input_ids"] for t in TEXTS]
    assert any(len(p) > 8 for p in prompts)  # some prompts span several chunks

    engine = build_tiny_engine(folder, max_num_batched_tokens=8)
    assert engine.pooling.mode == mode and engine.pooling.normalize
    first = _engine_embeddings(engine, prompts, "a")
    cached: list[int] = []
    again = _engine_embeddings(engine, prompts, "b", cached=cached)  # the same prompts again
    # Last-token pooling reuses the cached pages; mean and CLS read every position.
    long_prompts = sum(len(p) > 8 for p in prompts)
    assert sum(c > 0 for c in cached) == (long_prompts if mode == "last" else 0)
    for got in (first, again):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)


def test_dimensions_truncate_and_renormalize(tmp_path):
    folder = write_embedding_model(tmp_path / "st", "mean")
    engine = build_tiny_engine(folder)
    prompts = [[1, 15, 300, 7, 2048], [1, 9000, 17]]
    with pytest.raises(MaxError, match="matryoshka"):
        engine.add_request("x", prompts[0], SamplingParams(pooling=PoolingParams(16)))
    full = _engine_embeddings(engine, prompts, "full")
    engine.pooling = PoolingConfig(engine.pooling.hidden_size, "mean", True, ())  # is_matryoshka
    short = _engine_embeddings(engine, prompts, "short", dimensions=16)
    expected = torch.nn.functional.normalize(torch.tensor(full[:, :16]), dim=-1).numpy()
    np.testing.assert_allclose(short, expected, atol=1e-6)


def test_generation_engine_refuses_embeddings(tmp_path):
    from max.testing.tiny_checkpoints import write_tiny_checkpoint
    from max.testing.tiny_configs import TINY_CONFIGS

    engine = build_tiny_engine(write_tiny_checkpoint(tmp_path / "gen", TINY_CONFIGS["qwen3"]))
    assert engine.pooling is None
    with pytest.raises(MaxError, match="--task embed"):
        engine.add_request("e", [1, 2, 3], SamplingParams(pooling=PoolingParams()))


def test_pooling_config_files(tmp_path):
    folder = write_embedding_model(tmp_path / "st", "cls", normalize=False)
    config = read_pooling_config(folder, HIDDEN_64)
    assert (config.mode, config.normalize, config.matryoshka) == ("cls", False, None)
    assert resolve_task("auto", folder, "Qwen3ForCausalLM") == "embed"
    assert resolve_task("auto", tmp_path, "Qwen3ForCausalLM") == "generate"
    assert resolve_task("auto", tmp_path, "Qwen3Model") == "embed"
    assert resolve_task("generate", folder, "Qwen3Model") == "generate"
    # No modules.json: vLLM's default for decoder models, the last token, normalized.
    assert read_pooling_config(tmp_path, HIDDEN_64) == PoolingConfig(64, "last", True, None)
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "max"}')
    with pytest.raises(MaxError, match="not supported"):
        read_pooling_config(folder, HIDDEN_64)
