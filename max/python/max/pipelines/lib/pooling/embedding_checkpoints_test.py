"""Embedding checkpoints beyond qwen3's, in float32 on the CPU, against sentence-transformers.

Bare transformers of other architectures (`Qwen2Model` with its sliding window, `LlamaModel`
with llama3 rope scaling, `MistralModel`, `Gemma3TextModel`), found through the registry's
bare-name lookup; sentence-transformers' Dense modules between pooling and Normalize; and the
checkpoints refused at start-up: bidirectional attention, Dense settings we cannot reproduce.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, SamplingParams
from max.pipelines.lib.model_resolution import resolve_model
from max.pipelines.lib.pooling.pooling_config import read_pooling_config
from max.pipelines.lib.pooling.pooling_params import PoolingParams
from max.testing.parity import build_tiny_engine
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS
from max.testing.tiny_embedding_model import write_embedding_model

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, twice, and then once more for luck.",
    "a",
    "Dense layers project the pooled vector before it is normalized.",
]


def _embed(engine, prompts: list[list[int]]) -> np.ndarray:
    """Each prompt's embedding from the engine, all in one continuous batch."""
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, SamplingParams(pooling=PoolingParams()))
    vectors: dict[str, list[float]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.embedding is not None:
                vectors[out.request_id] = out.embedding
    return np.array([vectors[str(i)] for i in range(len(prompts))])


def _assert_parity(folder, **engine_overrides):
    """The engine's embeddings of TEXTS equal SentenceTransformer.encode's; returns the engine."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS))
    prompts = [reference.tokenizer(t)["input_ids"] for t in TEXTS]
    engine = build_tiny_engine(folder, **engine_overrides)
    got = _embed(engine, prompts)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    return engine


@pytest.mark.parametrize(
    ("arch", "bare", "mode"),
    [
        ("qwen2", "Qwen2Model", "last"),  # gte-Qwen2 / stella shape; sliding-window layers
        ("llama3", "LlamaModel", "mean"),
        ("mistral", "MistralModel", "cls"),
        ("gemma3", "Gemma3TextModel", "last"),  # causal (no use_bidirectional_attention)
    ],
)
def test_bare_model_matches_sentence_transformers(tmp_path, arch, bare, mode):
    folder = write_embedding_model(tmp_path / "st", mode, arch=arch)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [bare]
    resolved = resolve_model(PipelineConfig(model_path=str(folder)), register_all())
    assert resolved.architecture.name == bare and resolved.config.task == "embed"
    engine = _assert_parity(folder, max_num_batched_tokens=8)  # prompts span several chunks
    assert engine.pooling.mode == mode


def test_bare_names_come_from_transformers_tables():
    registry = register_all()
    gemma = registry.retrieve("Gemma3TextModel")
    assert gemma.pipeline_model is registry.retrieve("Gemma3ForCausalLM").pipeline_model
    assert registry.retrieve("Qwen3Model").name == "Qwen3Model"
    with pytest.raises(MaxError, match="not supported"):
        registry.retrieve("Gemma3Model")  # the multimodal bare class: not a text decoder
    with pytest.raises(MaxError, match="not supported"):
        registry.retrieve("BertModel")  # no registered causal LM


def test_dense_matches_sentence_transformers(tmp_path):
    dense = [(96, torch.nn.Tanh()), (48, torch.nn.Identity())]  # EmbeddingGemma's shape, smaller
    folder = write_embedding_model(tmp_path / "st", "mean", dense=dense)
    engine = _assert_parity(folder)
    assert engine.pooling.size == 48 and engine.pooling.normalize
    with pytest.raises(MaxError, match="matryoshka"):
        engine.pooling.check_dimensions(16)


def test_dense_without_normalize(tmp_path):
    folder = write_embedding_model(
        tmp_path / "st", "last", normalize=False, dense=[(32, torch.nn.Tanh())]
    )
    engine = _assert_parity(folder)
    assert not engine.pooling.normalize


def _dense_folder(
    tmp_path, dense_config: dict, modules: tuple[str, ...] = ("Transformer", "Pooling", "Dense")
):
    """A hand-written sentence-transformers folder (no transformer weights needed to read
    its pooling) with one Dense module of 64 -> 8 features."""
    entries = []
    for idx, kind in enumerate(modules):
        path = "" if kind == "Transformer" else f"{idx}_{kind}"
        entries.append(
            {
                "idx": idx,
                "name": str(idx),
                "path": path,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
        if path:
            (tmp_path / path).mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(entries))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    dense = tmp_path / f"{modules.index('Dense')}_Dense"
    (dense / "config.json").write_text(
        json.dumps({"in_features": 64, "out_features": 8, "bias": True, **dense_config})
    )
    save_file(
        {"linear.weight": torch.zeros(8, 64), "linear.bias": torch.zeros(8)},
        str(dense / "model.safetensors"),
    )
    return dense


def test_dense_settings_refused_with_the_file_named(tmp_path):
    hidden_64 = type("Config", (), {"hidden_size": 64})()
    dense = _dense_folder(tmp_path, {"activation_function": "torch.nn.modules.activation.Tanh"})
    config = read_pooling_config(tmp_path, hidden_64)
    assert (config.size, config.dense[0].activation, config.projection) == (8, "Tanh", None)
    assert config.with_projection(torch.device("cpu")).projection(torch.ones(64)).shape == (8,)
    save_file(
        {"linear.weight": torch.zeros(8, 32), "linear.bias": torch.zeros(8)},
        str(dense / "model.safetensors"),
    )
    with pytest.raises(MaxError, match=r"linear.weight has shape \(8, 32\), expected \(8, 64\)"):
        config.with_projection(torch.device("cpu"))

    for bad, message in [
        ({"activation_function": "my_package.Swish"}, "activation_function 'my_package.Swish'"),
        ({"activation_function": "torch.nn.modules.activation.Softplus"}, "is not supported"),
        ({"in_features": 32}, "in_features is 32"),
        ({"use_residual": True}, "use_residual"),
    ]:
        (dense / "config.json").write_text(
            json.dumps({"in_features": 64, "out_features": 8, **bad})
        )
        with pytest.raises(MaxError, match=message) as error:
            read_pooling_config(tmp_path, hidden_64)
        if "activation" in message or "supported" in message:
            assert str(dense / "config.json") in str(error.value)

    (dense / "config.json").write_text(json.dumps({"in_features": 64, "out_features": 8}))
    (dense / "model.safetensors").rename(dense / "pytorch_model.bin")
    with pytest.raises(MaxError, match="pickled"):
        read_pooling_config(tmp_path, hidden_64)


def test_dense_after_normalize_refused(tmp_path):
    _dense_folder(tmp_path, {}, modules=("Transformer", "Pooling", "Normalize", "Dense"))
    with pytest.raises(MaxError, match="then any Dense, then Normalize"):
        read_pooling_config(tmp_path, type("Config", (), {"hidden_size": 64})())


@pytest.mark.parametrize(
    ("arch", "bare", "setting"),
    [
        ("gemma3", "Gemma3TextModel", {"use_bidirectional_attention": True}),  # EmbeddingGemma
        ("qwen2", "Qwen2Model", {"is_causal": False}),  # e.g. Qodo-Embed's config
    ],
)
def test_bidirectional_attention_refused(tmp_path, arch, bare, setting):
    config = {**TINY_CONFIGS[arch], "architectures": [bare], **setting}
    folder = write_tiny_checkpoint(tmp_path / "m", config)
    with pytest.raises(MaxError, match="bidirectional attention is not supported"):
        resolve_model(PipelineConfig(model_path=str(folder)), register_all())
