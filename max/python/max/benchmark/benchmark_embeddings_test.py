"""The embeddings benchmark's GPU path on the CPU: a config-only tiny qwen3 with dummy
weights, the weights copied into transformers' model (fused projections split back), and
sentence-transformers' recipe on it equal to our engine's vectors in float32."""

from __future__ import annotations

import numpy as np
import torch

from max.benchmark.benchmark_embeddings import (
    engine_embed,
    recipe_embed,
    synthetic_texts,
    unfused_weights,
)
from max.testing.parity import build_tiny_engine
from max.testing.tiny_checkpoints import write_config_only
from max.testing.tiny_configs import TINY_CONFIGS


def test_texts_are_short_and_fixed():
    texts = synthetic_texts(50, seed=3)
    assert texts == synthetic_texts(50, seed=3) and len(set(texts)) == 50
    assert all(5 <= len(t.split()) <= 20 for t in texts)


def test_dummy_weights_reference_matches_engine(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from max.testing.tiny_tokenizer import tokenizer_dir

    config = dict(TINY_CONFIGS["qwen3"])
    folder = write_config_only(tmp_path / "cfg", config)
    engine = build_tiny_engine(folder, load_format="dummy", task="embed", max_num_batched_tokens=32)
    assert (engine.pooling.mode, engine.pooling.normalize) == ("last", True)  # vLLM's default
    hf_config = AutoConfig.from_pretrained(str(folder))
    model = AutoModel.from_config(hf_config, dtype=torch.float32).eval()
    model.load_state_dict(
        unfused_weights(engine.model.model.state_dict(), model.state_dict()), strict=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    texts = synthetic_texts(12, seed=1)
    ours, tokens = engine_embed(engine, tokenizer, texts)
    theirs = recipe_embed(model, tokenizer, texts, batch_size=5, mode="last", normalize=True)
    assert tokens == sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    # The recipe's padding must not leak into the pooled rows: batch size 1 agrees.
    np.testing.assert_allclose(recipe_embed(model, tokenizer, texts, 1, "mean", True),
                               recipe_embed(model, tokenizer, texts, 7, "mean", True), atol=1e-5)  # fmt: skip
