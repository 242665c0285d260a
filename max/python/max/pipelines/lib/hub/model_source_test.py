"""Finding model files: local folders and files, the HF cache layout, embedded models,
and clear refusals."""

import json

import pytest

from max.errors import MaxError
from max.pipelines.lib.hub.model_source import resolve_model_source
from max.pipelines.lib.weights import WeightsFormat


def _folder(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (path / name).write_text(content)
    return path


def test_default_is_the_embedded_smollm2():
    source = resolve_model_source(None)
    assert source.weights_format == WeightsFormat.gguf
    assert source.gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_embedded_alias(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert resolve_model_source("smollm2-135m").gguf_file.name.startswith("SmolLM2")
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct").weights_format == WeightsFormat.gguf


def test_safetensors_folder_single_and_sharded(tmp_path):
    single = _folder(tmp_path / "single", {"config.json": "{}", "model.safetensors": ""})
    assert resolve_model_source(str(single)).weight_files == [single / "model.safetensors"]
    sharded = _folder(
        tmp_path / "sharded",
        {
            "config.json": "{}",
            "model.safetensors.index.json": json.dumps({"weight_map": {}}),
            "model-00001-of-00002.safetensors": "",
            "model-00002-of-00002.safetensors": "",
        },
    )
    assert resolve_model_source(str(sharded)).weight_files == [sharded / "model.safetensors.index.json"]


def test_hf_cache_layout(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    snapshot = _folder(repo / "snapshots" / "abc123", {"config.json": "{}", "model.safetensors": ""})
    _folder(repo / "refs", {"main": "abc123"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    source = resolve_model_source("acme/tiny")
    assert source.directory.resolve() == snapshot.resolve()
    with pytest.raises(MaxError, match="not in the Hugging Face cache"):
        resolve_model_source("acme/absent")


def test_refusals(tmp_path):
    with pytest.raises(MaxError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))
    pickled = _folder(tmp_path / "pickled", {"config.json": "{}", "pytorch_model.bin": ""})
    with pytest.raises(MaxError, match="pickled PyTorch checkpoint"):
        resolve_model_source(str(pickled))
    with pytest.raises(MaxError, match="pickled PyTorch checkpoint"):
        resolve_model_source(str(pickled / "pytorch_model.bin"))
    two = _folder(tmp_path / "two", {"a.gguf": "", "b.gguf": ""})
    with pytest.raises(MaxError, match="several GGUF files"):
        resolve_model_source(str(two))
    assert resolve_model_source(str(two), [str(two / "b.gguf")]).gguf_file == two / "b.gguf"
    empty = _folder(tmp_path / "empty", {"README.md": "hi"})
    with pytest.raises(MaxError, match="holds no weights"):
        resolve_model_source(str(empty))
    noconfig = _folder(tmp_path / "noconfig", {"model.safetensors": ""})
    with pytest.raises(MaxError, match="no config.json"):
        resolve_model_source(str(noconfig))


def test_config_only_folder_needs_the_dummy_load_format(tmp_path):
    folder = _folder(tmp_path / "config-only", {"config.json": "{}"})
    with pytest.raises(MaxError, match="holds no weights.*--load-format dummy"):
        resolve_model_source(str(folder))
    source = resolve_model_source(str(folder), load_format="dummy")
    assert source.weight_files == [] and source.directory == folder


def test_tokenizer_sources(tmp_path):
    from max.pipelines.lib.hub.model_source import resolve_tokenizer_source

    folder = _folder(tmp_path / "tok", {"tokenizer.json": "{}"})
    assert resolve_tokenizer_source(str(folder)).directory == folder
    assert resolve_tokenizer_source("smollm2-135m").gguf_file.name.startswith("SmolLM2")
    with pytest.raises(MaxError, match="holds no tokenizer files"):
        resolve_tokenizer_source(str(_folder(tmp_path / "empty", {"config.json": "{}"})))
    with pytest.raises(MaxError, match="is not a local folder"):
        resolve_tokenizer_source(str(tmp_path / "missing"))
