"""Reading Hugging Face configs: defaults as transformers applies them, clear errors."""

import json

import pytest

from max.errors import MaxError
from max.pipelines.lib.hub.hf_config import (
    architecture_name,
    head_dim,
    layer_types,
    load_hf_config,
    rope_parameters,
)
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.weights import WeightsFormat


def _source(tmp_path, config) -> ModelSource:
    (tmp_path / "config.json").write_text(json.dumps(config) if isinstance(config, dict) else config)
    return ModelSource(str(tmp_path), tmp_path, WeightsFormat.safetensors, [])


def test_llama_defaults(tmp_path):
    source = _source(tmp_path, {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                                "num_attention_heads": 4, "num_hidden_layers": 2,
                                "rope_scaling": {"type": "linear", "factor": 2.0}})
    config = load_hf_config(source)
    assert architecture_name(source) == "LlamaForCausalLM"
    assert head_dim(config) == 16  # hidden / heads when head_dim is absent
    params = rope_parameters(config)
    assert params["rope_type"] == "linear" and params["factor"] == 2.0 and params["rope_theta"] == 10000.0
    assert layer_types(config) == ["full_attention"] * 2


def test_remote_code_needs_the_flag(tmp_path):
    source = _source(tmp_path, {"architectures": ["FancyForCausalLM"], "model_type": "fancy",
                                "auto_map": {"AutoConfig": "configuration_fancy.FancyConfig"}})
    with pytest.raises(MaxError, match="--trust-remote-code"):
        load_hf_config(source)


def test_bad_configs(tmp_path):
    with pytest.raises(MaxError, match="not valid JSON"):
        architecture_name(_source(tmp_path, "{oops"))
    with pytest.raises(MaxError, match="no 'architectures' list"):
        architecture_name(_source(tmp_path, {"model_type": "llama"}))
