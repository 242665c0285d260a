"""`--hf-overrides`: parsing the flag's JSON, and merging it into loaded configs (nested
sub-configs merged, plain fields replaced, new keys added, types kept), for config.json
and GGUF models alike; `resolve_model` choosing the architecture and task from the
overridden config, and a speculative draft model not inheriting the target's overrides."""

from __future__ import annotations

import json

import pytest

from max.errors import MaxError
from max.pipelines.lib import PipelineConfig
from max.pipelines.lib.hub.hf_config import architecture_name, load_hf_config, rope_parameters
from max.pipelines.lib.hub.hf_overrides import apply_hf_overrides, parse_hf_overrides
from max.pipelines.lib.hub.model_source import ModelSource, resolve_model_source
from max.pipelines.lib.weights import WeightsFormat
from max.testing.tiny_checkpoints import llama_config


def _source(tmp_path, config: dict) -> ModelSource:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return ModelSource(str(tmp_path), tmp_path, WeightsFormat.safetensors, [])


def test_parse_json_text_and_mappings():
    assert parse_hf_overrides('{"a": 1, "b": {"c": [1, 2.5, true]}}') == {"a": 1, "b": {"c": [1, 2.5, True]}}
    given = {"text_config": {"sliding_window": 8}}
    parsed = parse_hf_overrides(given)
    assert parsed == given and parsed["text_config"] is not given["text_config"]  # a private copy
    assert parse_hf_overrides(None) is None and parse_hf_overrides("{}") is None
    config = PipelineConfig(hf_overrides='{"is_matryoshka": true}')
    config.validate()  # the offline API takes the flag's text too
    assert config.hf_overrides == {"is_matryoshka": True}


@pytest.mark.parametrize(
    "text, message",
    [
        ("{matryoshka_dimensions: [1]}", "not valid JSON"),
        ("[256, 512]", "expected a JSON object"),
        ('"max_position_embeddings"', "expected a JSON object"),
        ("7", "expected a JSON object"),
    ],
)
def test_bad_json_is_a_usage_error_naming_the_flag(text, message):
    with pytest.raises(MaxError, match=f"^--hf-overrides: {message}"):
        parse_hf_overrides(text)
    with pytest.raises(MaxError, match="^--hf-overrides"):
        PipelineConfig(hf_overrides=text).validate()


def test_new_keys_and_types_kept(tmp_path):
    source = _source(tmp_path, llama_config(rms_norm_eps=1e-5))
    overrides = {
        "matryoshka_dimensions": [16, 32],
        "is_matryoshka": True,
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1,  # JSON's integer, for a float field
        "rope_theta": 500000,
    }
    config = load_hf_config(source, overrides=overrides)
    assert config.matryoshka_dimensions == [16, 32] and config.is_matryoshka is True
    assert config.max_position_embeddings == 65536 and type(config.max_position_embeddings) is int
    assert config.rms_norm_eps == 1.0 and type(config.rms_norm_eps) is float
    assert rope_parameters(config)["rope_theta"] == 500000.0  # read where transformers reads it
    assert load_hf_config(source).max_position_embeddings == 512  # the file is untouched


def test_a_plain_dict_field_is_replaced_and_keeps_the_rope_base(tmp_path):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 16.0}
    source = _source(tmp_path, llama_config(rope_theta=1e6, rope_scaling=yarn))
    config = load_hf_config(source, overrides={"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    params = rope_parameters(config)
    assert params["rope_type"] == "linear" and params["factor"] == 2.0
    assert "beta_fast" not in params  # no key of the old value survives
    assert params["rope_theta"] == 1e6  # the model's base, not transformers' None


def test_nested_objects_merge_into_sub_configs():
    from transformers import Gemma3Config

    config = Gemma3Config()
    text_class, hidden = type(config.text_config), config.text_config.hidden_size
    vision_layers = config.vision_config.num_hidden_layers
    apply_hf_overrides(config, {"text_config": {"sliding_window": 64, "pad_dims": [2]}, "image_token_index": 7})
    assert type(config.text_config) is text_class  # merged into, not replaced by a dict
    assert config.text_config.sliding_window == 64 and config.text_config.pad_dims == [2]
    assert config.text_config.hidden_size == hidden and config.vision_config.num_hidden_layers == vision_layers
    assert config.image_token_index == 7


def test_a_value_transformers_refuses_names_the_key():
    pytest.importorskip("huggingface_hub.errors", reason="strict config fields")
    from huggingface_hub import errors

    if not hasattr(errors, "StrictDataclassError"):
        pytest.skip("this transformers checks no field types")
    from transformers import Gemma3Config

    with pytest.raises(MaxError, match=r"^--hf-overrides: text_config\.num_hidden_layers: .*int"):
        apply_hf_overrides(Gemma3Config(), {"text_config": {"num_hidden_layers": "three"}})


def test_architectures_can_be_overridden(tmp_path):
    source = _source(tmp_path, llama_config())
    assert architecture_name(source, overrides={"architectures": ["Qwen3ForCausalLM"]}) == "Qwen3ForCausalLM"
    assert architecture_name(source, overrides={"max_position_embeddings": 8}) == "LlamaForCausalLM"
    with pytest.raises(MaxError, match="--hf-overrides: \"architectures\" must be a list"):
        architecture_name(source, overrides={"architectures": "Qwen3ForCausalLM"})


def test_gguf_config_is_overridden_too(tmp_path):
    from max.testing.tiny_checkpoints import write_tiny_checkpoint
    from max.testing.tiny_gguf import write_llama_gguf

    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", llama_config())
    path = write_llama_gguf(checkpoint, tmp_path / "tiny.gguf")
    source = resolve_model_source(str(path))
    assert source.weights_format == WeightsFormat.gguf
    assert load_hf_config(source).max_position_embeddings == 512
    config = load_hf_config(source, overrides={"max_position_embeddings": 4096, "is_matryoshka": True})
    assert config.max_position_embeddings == 4096 and config.is_matryoshka is True
    assert architecture_name(source, overrides={"architectures": ["MyLlama"]}) == "MyLlama"


def test_resolution_applies_them_and_a_draft_model_does_not_inherit_them(tmp_path):
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import resolve_model
    from max.pipelines.lib.speculative.draft_model_builder import draft_pipeline_config
    from max.testing.tiny_checkpoints import write_config_only
    from max.testing.tiny_configs import TINY_CONFIGS

    folder = write_config_only(tmp_path / "qwen3", TINY_CONFIGS["qwen3"])
    settings = dict(model_path=str(folder), load_format="dummy", skip_tokenizer_init=True)
    assert resolve_model(PipelineConfig(**settings), register_all()).config.task == "generate"
    overrides = {"architectures": ["Qwen3Model"], "max_position_embeddings": 96}
    resolved = resolve_model(PipelineConfig(**settings, hf_overrides=overrides), register_all())
    assert resolved.config.task == "embed"  # `--task auto` reads the overridden class
    assert resolved.hf_config.max_position_embeddings == 96 and resolved.max_seq_len == 96
    assert resolved.config.hf_overrides == overrides  # pinned for the engine processes
    assert draft_pipeline_config(str(folder), resolved).hf_overrides is None
