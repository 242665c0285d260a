"""Choosing a repo's files: metadata and one set of weights, GGUF files by encoding, never
pickles, and clear refusals."""

import json

import pytest

from max.errors import MaxError
from max.pipelines.lib.hub.hub_files import (
    choose_gguf,
    select_model_files,
    select_tokenizer_files,
    split_weight_reference,
)

TOKENIZER = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def test_safetensors_with_metadata_and_no_pickles(tmp_path):
    files = ["config.json", "generation_config.json", *TOKENIZER, "model.safetensors", "pytorch_model.bin", "README.md"]
    chosen = select_model_files("a/b", files, tmp_path)
    assert chosen.weights == ["model.safetensors"]
    assert set(chosen.download) == {"config.json", "generation_config.json", *TOKENIZER, "model.safetensors"}
    assert chosen.required() == ["config.json", "model.safetensors"]


def test_sentence_transformers_dense_modules_are_fetched(tmp_path):
    dense = ["2_Dense/config.json", "2_Dense/model.safetensors", "3_Dense/config.json", "3_Dense/model.safetensors"]
    files = ["config.json", "model.safetensors", "modules.json", "1_Pooling/config.json", *dense,
             "2_Dense/pytorch_model.bin", "onnx/model.onnx"]  # fmt: skip
    chosen = select_model_files("a/b", files, tmp_path)
    assert chosen.weights == ["model.safetensors"]
    assert set(chosen.download) == {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json", *dense}
    assert set(dense) <= set(chosen.required())  # the projection cannot run without them


def test_sharded_safetensors_fetch_the_shards_the_index_names(tmp_path):
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    files = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "consolidated.safetensors", "original/consolidated.00.pth"]
    chosen = select_model_files("a/b", files, tmp_path)
    assert chosen.weights == ["model.safetensors.index.json"]
    assert "consolidated.safetensors" not in chosen.download
    assert chosen.download[-2:] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_gguf_picked_by_encoding():
    ggufs = ["m-F16.gguf", "m-BF16.gguf", "m-Q4_0.gguf", "m-Q4_0_4_4.gguf", "m-Q4_K_S.gguf", "m-Q4_K_M.gguf",
             "sub/m-q8_0.gguf"]
    assert choose_gguf("a/b", ggufs, "float16") == "m-F16.gguf"
    assert choose_gguf("a/b", ggufs, "bfloat16") == "m-BF16.gguf"
    assert choose_gguf("a/b", ggufs, "q4_0") == "m-Q4_0.gguf"
    assert choose_gguf("a/b", ggufs, "q4_k") == "m-Q4_K_M.gguf"
    assert choose_gguf("a/b", ggufs, "q8_0") == "sub/m-q8_0.gguf"
    assert choose_gguf("a/b", ["only.gguf"], None) == "only.gguf"
    with pytest.raises(MaxError, match="several GGUF files.*--quantization-encoding"):
        choose_gguf("a/b", ggufs, None)
    with pytest.raises(MaxError, match="no GGUF file in encoding q6_k"):
        choose_gguf("a/b", ggufs, "q6_k")
    with pytest.raises(MaxError, match="split GGUF"):
        choose_gguf("a/b", ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"], "q8_0")


def test_quantized_encoding_prefers_gguf_over_safetensors(tmp_path):
    files = ["config.json", "model.safetensors", "m-Q8_0.gguf"]
    assert select_model_files("a/b", files, tmp_path).weights == ["model.safetensors"]
    assert select_model_files("a/b", files, tmp_path, encoding="q8_0").weights == ["m-Q8_0.gguf"]


def test_weight_names_and_refusals(tmp_path):
    files = ["config.json", "model.safetensors", "m.gguf", "pytorch_model.bin"]
    assert select_model_files("a/b", files, tmp_path, ["m.gguf"]).weights == ["m.gguf"]
    with pytest.raises(MaxError, match="--weight-path nope.gguf: a/b has no such file"):
        select_model_files("a/b", files, tmp_path, ["nope.gguf"])
    with pytest.raises(MaxError, match="pickled PyTorch checkpoint"):
        select_model_files("a/b", files, tmp_path, ["pytorch_model.bin"])
    with pytest.raises(MaxError, match="holds only pickled PyTorch checkpoints"):
        select_model_files("a/b", ["config.json", "pytorch_model.bin"], tmp_path)
    with pytest.raises(MaxError, match="holds no safetensors or GGUF weights"):
        select_model_files("a/b", ["config.json", "README.md"], tmp_path)
    dummy = select_model_files("a/b", ["config.json", "model.safetensors"], tmp_path, load_format="dummy")
    assert dummy.weights == [] and dummy.download == ["config.json"]


def test_tokenizer_files_and_weight_references():
    assert select_tokenizer_files("a/b", ["config.json", *TOKENIZER, "model.safetensors"]).download == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    with pytest.raises(MaxError, match="has no tokenizer files"):
        select_tokenizer_files("a/b", ["config.json", "m.gguf"])
    assert split_weight_reference("m.gguf", "a/b", ["m.gguf"]) == ("a/b", "m.gguf")
    assert split_weight_reference("a/b/sub/m.gguf", "a/b", []) == ("a/b", "sub/m.gguf")
    assert split_weight_reference("c/d-GGUF/m.gguf", "a/b", ["m.gguf"]) == ("c/d-GGUF", "m.gguf")
