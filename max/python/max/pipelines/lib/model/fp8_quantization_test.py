"""`--quantization fp8` on the CPU (its float32 emulation, the reference the GPU is checked
against): which layers become FP8, that logits stay close to the float model's, and that
bad combinations are usage errors naming the flag."""

import pytest
import torch

from max.entrypoints.cli_args import add_model_args, pipeline_config_from_args
from max.errors import MaxError
from max.nn.fp8_linear import Fp8Linear, quantize_linears_fp8
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

PROMPTS = [[1, 50, 60, 70, 80], [1] + list(range(300, 330))]  # 5 and 31 tokens: both paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=3)


def _engine(path, **overrides):
    settings = dict(model_path=str(path), quantization_encoding="float32", kv_cache_page_size=4, max_length=128)
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_fp8_quantizes_the_decoder_s_linear_layers_and_stays_close_to_float(checkpoint):
    reference = _engine(checkpoint)
    engine = _engine(checkpoint, quantization="fp8")
    network = engine.model.model
    layers = [m for m in network.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 3 * 4  # qkv, o, gate_up, down in each of 3 layers
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.weight_scale.dtype == torch.float32 for m in layers)
    assert network.lm_head.weight.dtype == torch.float32  # the head and embeddings keep their dtype
    for prompt in PROMPTS:
        assert _cos(prompt_logits(engine, prompt), prompt_logits(reference, prompt)) > 0.995
    assert greedy_tokens(engine, [PROMPTS[0]], 1) == greedy_tokens(reference, [PROMPTS[0]], 1)


def test_fp8_in_bfloat16_runs_the_same_layers(checkpoint):
    engine = _engine(checkpoint, quantization="fp8", quantization_encoding="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    assert len(greedy_tokens(engine, PROMPTS, 3)[1]) == 3


@pytest.mark.parametrize("arch", ["qwen3_moe", "gemma3"])
def test_fp8_skips_routers_experts_and_keeps_other_architectures_running(arch, tmp_path):
    path = write_tiny_checkpoint(tmp_path, TINY_CONFIGS[arch], seed=1)
    engine = _engine(path, quantization="fp8")
    network = engine.model.model
    assert any(isinstance(m, Fp8Linear) for m in network.modules())
    for module in network.modules():
        for name in getattr(module, "unquantized_children", ()):
            assert not isinstance(getattr(module, name), Fp8Linear)
    assert len(greedy_tokens(engine, [PROMPTS[0]], 2)[0]) == 2


def test_only_decoder_layers_are_quantized_and_bad_shapes_are_refused():
    net = torch.nn.Module()
    net.layers = torch.nn.ModuleList([torch.nn.Linear(24, 40)])  # not a Transformer: untouched
    assert quantize_linears_fp8(net) == 0
    with pytest.raises(MaxError, match="multiples of 16"):
        Fp8Linear(torch.zeros(40, 24), None)


def test_bad_combinations_are_usage_errors(checkpoint):
    with pytest.raises(MaxError, match="unknown quantization 'int3'"):
        resolve_model(PipelineConfig(model_path=str(checkpoint), quantization="int3"), register_all())
    with pytest.raises(MaxError, match="cannot be combined with the quantized encoding q4_0"):
        resolve_model(
            PipelineConfig(model_path=str(checkpoint), quantization="fp8", quantization_encoding="q4_0"),
            register_all(),
        )


def test_the_flag_reaches_the_config():
    import argparse

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    assert pipeline_config_from_args(parser.parse_args(["--quantization", "fp8"])).quantization == "fp8"
    assert pipeline_config_from_args(parser.parse_args([])).quantization is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--quantization", "int8"])


def test_auto_encoding_reads_a_quantized_gguf_as_float_under_fp8():
    from max.pipelines.lib.config import FLOAT_ENCODINGS

    resolved = resolve_model(PipelineConfig(quantization_encoding="auto", quantization="fp8"), register_all())
    assert resolved.config.quantization_encoding in FLOAT_ENCODINGS  # the embedded SmolLM2 is Q4_1


def test_the_start_up_line_names_fp8():
    from max.pipelines.lib.model_resolution import describe_encoding

    line = describe_encoding(resolve_model(PipelineConfig(quantization_encoding="bfloat16", quantization="fp8"), register_all()))
    assert "--quantization fp8" in line and "e4m3" in line
