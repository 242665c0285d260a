"""The fast CPU path: quantized encodings keep weights as int8 / int4 and compute in
bfloat16, `auto` chooses them, bad combinations are refused, float32 stays the default,
and torch gets one thread per available core."""

import os

import pytest
import torch

from max.errors import MaxError
from max.nn.cpu_weight_paths import PathMeasurement
from max.nn.int8_dynamic_linear import Int8DynamicLinear, int8_dynamic_supported
from max.nn.quantized_linear import (
    Int4WeightOnlyLinear,
    Int8GroupLinear,
    Int8WeightOnlyLinear,
    int4_kernel,
)
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.model_resolution import gguf_weights_encoding
from max.pipelines.lib.plan import WeightScheme, choose_cpu_encoding
from max.pipelines.lib.weights import GGUFFile
from max.testing.engine_probes import greedy_tokens, prompt_logits
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_gguf import write_llama_gguf
from max_kernels import cpu_int8

PROMPTS = [[1, 50, 60, 70, 80], [1, 7, 9], [1, 300, 301, 302, 303, 304, 305]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), llama_config(), seed=3)


@pytest.fixture(scope="module")
def q4_1_gguf(checkpoint, tmp_path_factory):
    return write_llama_gguf(checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-Q4_1.gguf", "Q4_1")


@pytest.fixture
def cpu_int_rule(monkeypatch):
    """Sets the CPU's int4 kernel rule (`MAX_CPU_INT4_KERNEL`) for one test, whatever this
    CPU would choose, and restores it."""

    def force(kernel: str) -> None:
        monkeypatch.setenv("MAX_CPU_INT4_KERNEL", kernel)
        int4_kernel.cache_clear()

    yield force
    int4_kernel.cache_clear()


def _engine(path, encoding, **overrides):
    settings = dict(
        model_path=str(path), quantization_encoding=encoding, kv_cache_page_size=4, max_length=128
    )
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _layers(engine, kind):
    return [m for m in engine.model.model.modules() if isinstance(m, kind)]


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_default_on_the_cpu_stays_float32_with_float_weights(checkpoint):
    engine = _engine(checkpoint, None)
    assert engine.model.dtype == torch.float32
    assert not _layers(engine, (Int8WeightOnlyLinear, Int4WeightOnlyLinear))


def test_q8_0_quantizes_safetensors_on_load_and_keeps_float32_s_greedy_tokens(checkpoint, cpu_int_rule):
    cpu_int_rule("torch")  # our kernels' int8 head: test_our_kernels_hold_int8_in_groups_...
    reference = _engine(checkpoint, "float32")
    engine = _engine(checkpoint, "q8_0")
    assert engine.model.dtype == torch.bfloat16
    assert len(_layers(engine, Int8WeightOnlyLinear)) == 3 * 4  # qkv, o, gate_up, down per layer
    assert _cos(prompt_logits(engine, PROMPTS[2]), prompt_logits(reference, PROMPTS[2])) > 0.999
    assert greedy_tokens(engine, PROMPTS, 4) == greedy_tokens(reference, PROMPTS, 4)


def test_q4_0_quantizes_safetensors_on_load_to_int4(checkpoint):
    reference = _engine(checkpoint, "float32")
    engine = _engine(checkpoint, "q4_0")
    assert len(_layers(engine, Int4WeightOnlyLinear)) == 3 * 4
    assert _cos(prompt_logits(engine, PROMPTS[2]), prompt_logits(reference, PROMPTS[2])) > 0.99


def test_q4_1_gguf_is_kept_as_int4_and_follows_the_bfloat16_dequantized_model(q4_1_gguf):
    assert gguf_weights_encoding(GGUFFile(q4_1_gguf)) == "q4_1"
    dequantized = _engine(q4_1_gguf, "bfloat16")
    engine = _engine(q4_1_gguf, "q4_1")
    assert len(_layers(engine, Int4WeightOnlyLinear)) == 3 * 4
    # The Q4_1 codes survive re-quantization; only the scales' bfloat16 rounding differs.
    assert _cos(prompt_logits(engine, PROMPTS[0]), prompt_logits(dequantized, PROMPTS[0])) > 0.999
    assert greedy_tokens(engine, PROMPTS, 4) == greedy_tokens(dequantized, PROMPTS, 4)


def test_auto_picks_the_checkpoint_s_encoding_when_the_cpu_has_bfloat16():
    assert choose_cpu_encoding("q4_1", bfloat16_native=True) == "q4_1"
    assert choose_cpu_encoding("q4_k", bfloat16_native=True) == "q4_k"
    assert choose_cpu_encoding("q8_0", bfloat16_native=True) == "q8_0"
    assert choose_cpu_encoding("f16", bfloat16_native=True) == "bfloat16"
    assert choose_cpu_encoding(None, bfloat16_native=True) == "bfloat16"
    assert choose_cpu_encoding("q4_1", bfloat16_native=False) == "float32"
    assert choose_cpu_encoding(None, bfloat16_native=False) == "float32"


def _measured(monkeypatch, **ms):
    """`auto` sees these ms per token (injected: no timing, no dependence on this CPU)."""
    from max.pipelines.lib import cpu_encoding_choice

    def measure(names, shapes, layers, head):
        return [PathMeasurement(n, ms[n], 0.0, 1.0) for n in names]

    monkeypatch.setattr(cpu_encoding_choice, "_PROCESS_CACHE", {})
    monkeypatch.setattr(cpu_encoding_choice, "measure_paths", measure)
    monkeypatch.setattr(cpu_encoding_choice, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setenv("MAX_CPU_WEIGHT_PATH_CACHE", "off")


def test_auto_is_resolved_once_and_pinned_in_the_config(q4_1_gguf, monkeypatch):
    _measured(monkeypatch, float32=50.0, bfloat16=20.0, int8=15.0, int8_dynamic=14.0, int4=9.0)
    resolved = resolve_model(
        PipelineConfig(model_path=str(q4_1_gguf), quantization_encoding="auto"), register_all()
    )
    assert resolved.config.quantization_encoding == "q4_1"
    assert resolved.dtype == torch.bfloat16
    _measured(monkeypatch, float32=10.0, bfloat16=20.0, int8=15.0, int8_dynamic=14.0, int4=19.0)
    resolved = resolve_model(
        PipelineConfig(model_path=str(q4_1_gguf), quantization_encoding="auto"), register_all()
    )
    assert resolved.config.quantization_encoding == "float32"


@pytest.mark.skipif(not int8_dynamic_supported(), reason="this torch build has no fbgemm engine")
def test_a_measured_int8_activation_choice_is_pinned_and_built(q4_1_gguf, monkeypatch):
    _measured(monkeypatch, float32=50.0, bfloat16=20.0, int8=15.0, int8_dynamic=8.0, int4=15.0)
    resolved = resolve_model(
        PipelineConfig(model_path=str(q4_1_gguf), quantization_encoding="auto"), register_all()
    )
    assert (resolved.config.quantization_encoding, resolved.config.quantization) == ("bfloat16", "int8_dynamic")
    assert resolved.plan.weight_scheme == WeightScheme.INT8_DYNAMIC
    engine = build_engine(resolved)
    assert len(_layers(engine, Int8DynamicLinear)) == 3 * 4
    reference = _engine(q4_1_gguf, "float32")
    for prompt in PROMPTS:
        assert _cos(prompt_logits(engine, prompt), prompt_logits(reference, prompt)) > 0.995
    # The tiny random model's logits are nearly flat: later greedy steps may swap near-ties.
    assert greedy_tokens(engine, PROMPTS, 1) == greedy_tokens(reference, PROMPTS, 1)


def test_bad_combinations_are_usage_errors(checkpoint):
    with pytest.raises(MaxError, match="unknown encoding 'int3'"):
        resolve_model(
            PipelineConfig(model_path=str(checkpoint), quantization_encoding="int3"), register_all()
        )
    with pytest.raises(
        MaxError, match="keeps weights quantized on the CPU.*--tensor-parallel-size"
    ):
        resolve_model(
            PipelineConfig(
                model_path=str(checkpoint), quantization_encoding="q4_0", tensor_parallel_size=2
            ),
            register_all(),
        )


def test_cpu_threads_follow_the_affinity_unless_the_environment_says():
    """The entry point reads MAX_CPU_THREADS (or OMP_NUM_THREADS) into --cpu-threads'
    default; the plan falls back to the cores this process may run on."""
    import argparse

    from max.entrypoints.cli_args import add_model_args, pipeline_config_from_args
    from max.pipelines.lib.pipeline_builder import set_cpu_threads
    from max.pipelines.lib.plan import resolve_plan

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    before = torch.get_num_threads()
    try:
        config = pipeline_config_from_args(parser.parse_args([]), env={"MAX_CPU_THREADS": "1", "OMP_NUM_THREADS": "3"})
        assert set_cpu_threads(resolve_plan(config)) == 1 and torch.get_num_threads() == 1
        config = pipeline_config_from_args(parser.parse_args(["--cpu-threads", "2"]), env={"MAX_CPU_THREADS": "1"})
        assert config.cpu_threads == 2  # the flag wins over the environment
        config = pipeline_config_from_args(parser.parse_args([]), env={})
        assert set_cpu_threads(resolve_plan(config)) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_torch_s_rule_keeps_int8_per_channel_and_a_bfloat16_head(checkpoint, cpu_int_rule):
    cpu_int_rule("torch")
    engine = _engine(checkpoint, "q8_0")
    assert len(_layers(engine, Int8WeightOnlyLinear)) == 3 * 4 and not _layers(engine, Int8GroupLinear)


@pytest.mark.skipif(not cpu_int8.available(), reason="no AVX2/FMA or no C compiler here")
def test_our_kernels_hold_int8_in_groups_and_the_head_in_int8(checkpoint, q4_1_gguf, cpu_int_rule):
    cpu_int_rule("native")
    reference = _engine(checkpoint, "float32")
    engine = _engine(checkpoint, "q8_0")
    groups = _layers(engine, Int8GroupLinear)
    # The decoder's 12 linears, and the (untied) LM head's int8 copy, which computes the logits.
    assert len(groups) == 3 * 4 + 1 and engine.model.model.lm_head.quantized_logits in groups
    # As close to float32 as int8 per channel is (greedy tokens of a random model, whose top
    # two logits can be 0.02 apart, are not compared: the head's rounding moves them).
    assert _cos(prompt_logits(engine, PROMPTS[2]), prompt_logits(reference, PROMPTS[2])) > 0.999
    dequantized = _engine(q4_1_gguf, "bfloat16")
    q4 = _engine(q4_1_gguf, "q4_1")
    assert len(_layers(q4, Int4WeightOnlyLinear)) == 3 * 4 and q4.model.model.lm_head.quantized_logits is not None
    assert _cos(prompt_logits(q4, PROMPTS[0]), prompt_logits(dequantized, PROMPTS[0])) > 0.999
