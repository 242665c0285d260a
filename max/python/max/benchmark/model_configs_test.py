"""Each benchmark model config loads as `--load-format dummy` would load it (config-only
folder, its architecture, its config class), and its network, shaped on the meta device
without allocating, has the published parameter count (and transformers' own count)."""

import pytest
import torch

from max.benchmark.model_configs import BENCHMARK_MODELS, config_dir
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, resolve_model
from max.pipelines.lib.model.pipeline_model import skip_parameter_init
from max.testing.tiny_checkpoints import reference_from_config


def _meta_network(resolved):
    """The architecture's network for the config, on the meta device (no memory)."""
    cls = resolved.architecture.pipeline_model
    model = cls.__new__(cls)  # only the config is needed to shape the network
    model.pipeline_config = resolved.config
    model.hf_config = resolved.hf_config
    model.dtype = torch.bfloat16
    model.device = torch.device("meta")
    model.max_seq_len = resolved.max_seq_len
    model.model_config = cls.config_class.from_huggingface(resolved.hf_config, model.max_seq_len)
    with torch.device("meta"), skip_parameter_init():
        return model.build_network()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors once


@pytest.mark.parametrize("name", sorted(BENCHMARK_MODELS))
def test_config_loads_with_the_published_size(name):
    config = PipelineConfig(model_path=str(config_dir(name)), load_format="dummy", max_length=4096)
    resolved = resolve_model(config, register_all())
    assert resolved.source.weight_files == []
    assert resolved.architecture.name == resolved.hf_config.architectures[0]
    assert resolved.eos_token_ids()
    ours = _count(_meta_network(resolved))
    assert ours == pytest.approx(BENCHMARK_MODELS[name], rel=0.03), f"{name}: {ours / 1e9:.2f}B"

    with torch.device("meta"):
        reference = reference_from_config(resolved.hf_config)
    assert ours == _count(reference)


def test_gemma3_layers_alternate_five_local_one_global():
    resolved = resolve_model(
        PipelineConfig(model_path=str(config_dir("Gemma-3-12B")), load_format="dummy", max_length=4096), register_all()
    )
    config = resolved.architecture.pipeline_model.config_class.from_huggingface(resolved.hf_config, 4096)
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 8
    assert config.sliding_window == 1024
    assert config.local_rope_parameters["rope_theta"] == 10000.0
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 8.0


def test_gpt_oss_reads_yarn_sinks_windows_and_experts():
    resolved = resolve_model(
        PipelineConfig(model_path=str(config_dir("gpt-oss-20b")), load_format="dummy", max_length=4096), register_all()
    )
    config = resolved.architecture.pipeline_model.config_class.from_huggingface(resolved.hf_config, 4096)
    assert config.layer_types == ["sliding_attention", "full_attention"] * 12 and config.sliding_window == 128
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["truncate"], rope["rope_theta"]) == ("yarn", 32.0, False, 150000)
    assert config.attention_sinks and config.qkv_bias and config.o_bias
    moe = config.moe
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (32, 4, 2880)
    assert (moe.routing, moe.activation, moe.swiglu_limit, moe.swiglu_alpha) == ("topk_softmax", "clamped_swiglu", 7.0, 1.702)
    assert config.moe_layers == list(range(24))


def test_phi3_128k_reads_longrope_and_an_unbinding_window():
    resolved = resolve_model(
        PipelineConfig(model_path=str(config_dir("Phi-3-mini-128k")), load_format="dummy", max_length=4096), register_all()
    )
    config = resolved.architecture.pipeline_model.config_class.from_huggingface(resolved.hf_config, 4096)
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["original_max_position_embeddings"] == 4096
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == 48
    assert config.layer_types == ["full_attention"] * 32  # its 262144 window never binds
    mini_4k = resolve_model(
        PipelineConfig(model_path=str(config_dir("Phi-3-mini-4k")), load_format="dummy", max_length=4096), register_all()
    )
    config = mini_4k.architecture.pipeline_model.config_class.from_huggingface(mini_4k.hf_config, 4096)
    assert config.layer_types == ["sliding_attention"] * 32 and config.sliding_window == 2047
