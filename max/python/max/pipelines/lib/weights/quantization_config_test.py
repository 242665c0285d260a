"""Detection of pre-quantized checkpoints from config.json, refusals naming what is not read,
flags that contradict the checkpoint, and GPTQ / AWQ packing unpacked back exactly."""

from types import SimpleNamespace

import pytest
import torch

from max.errors import MaxError
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.plan import WeightScheme, resolve_plan
from max.pipelines.lib.weights.int4_checkpoint import (
    dequantize_int4_parts,
    unpack_columns,
    unpack_rows,
)
from max.pipelines.lib.weights.quantization_config import read_quantization
from max.testing.quantized_checkpoints import (
    _ct_config,
    gptq_quantize,
    int4_dequantized,
    pack_awq,
    pack_gptq,
)


def _read(entry):
    return read_quantization(SimpleNamespace(quantization_config=entry))


@pytest.mark.parametrize("strategy", ["tensor", "channel", "block"])
def test_compressed_tensors_fp8_schemes_are_detected(strategy):
    quant = _read(_ct_config(strategy))
    assert (quant.method, quant.format, quant.strategy) == ("fp8", "compressed-tensors", strategy)
    assert quant.block_size == ((16, 32) if strategy == "block" else None)


def test_fp8_formats_and_int4_formats_are_detected():
    assert _read({"quant_method": "fbgemm_fp8"}).strategy == "channel"
    block = _read({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"})
    assert (block.strategy, block.block_size) == ("block", (128, 128))
    assert _read({"quant_method": "fp8"}).strategy == "tensor"
    gptq = _read({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": False})
    assert (gptq.method, gptq.group_size, gptq.desc_act, gptq.symmetric, gptq.zero_offset) == ("int4", 128, True, False, 1)
    assert _read({"quant_method": "gptq", "bits": 4, "group_size": -1, "checkpoint_format": "gptq_v2"}).zero_offset == 0
    awq = _read({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "GEMM"})
    assert (awq.format, awq.group_size, awq.symmetric) == ("awq", 64, False)


def test_float_and_architecture_read_checkpoints_have_no_scheme():
    assert read_quantization(SimpleNamespace()) is None
    assert _read({"quant_method": "mxfp4"}) is None  # gpt-oss's experts: read by the architecture


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
        ({"quant_method": "gptq", "bits": 8}, "gptq with 8 bits"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "awq version 'gemv'"),
        ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {"weights": {}}}}, "'pack-quantized'"),
        (
            {"quant_method": "compressed-tensors", "format": "int-quantized",
             "config_groups": {"g": {"weights": {"type": "int", "num_bits": 8}}}},
            "'int-quantized'",
        ),
        (
            {"quant_method": "compressed-tensors", "format": "naive-quantized",
             "config_groups": {"g": {"weights": {"type": "int", "num_bits": 8, "strategy": "channel"}}}},
            "type 'int' with 8 bits",
        ),
    ],
)  # fmt: skip
def test_unsupported_formats_are_refused_by_name(entry, named):
    with pytest.raises(MaxError, match=named):
        _read(entry)


def test_flags_that_contradict_a_quantized_checkpoint_are_usage_errors():
    fp8 = _read({"quant_method": "fbgemm_fp8"})
    with pytest.raises(MaxError, match="already quantized .*drop --quantization"):
        resolve_plan(PipelineConfig(quantization="fp8"), None, fp8)
    with pytest.raises(MaxError, match="q4_0 is a GGUF encoding"):
        resolve_plan(PipelineConfig(quantization_encoding="q4_0"), None, fp8)
    gptq = _read({"quant_method": "gptq", "bits": 4, "group_size": 32})
    with pytest.raises(MaxError, match="drop --quantization"):
        resolve_plan(PipelineConfig(quantization="int4"), None, gptq)


def test_the_plan_holds_fp8_dequantized_on_the_cpu_and_int4_packed():
    fp8 = _read({"quant_method": "fbgemm_fp8"})
    plan = resolve_plan(PipelineConfig(), None, fp8)
    assert plan.weight_scheme == WeightScheme.FLOAT and plan.dtype == torch.float32
    assert plan.checkpoint_quantization == fp8
    gptq = _read({"quant_method": "gptq", "bits": 4, "group_size": 32})
    assert resolve_plan(PipelineConfig(), None, gptq).weight_scheme == WeightScheme.W4A16
    assert resolve_plan(PipelineConfig(quantization="int4"), None, None).weight_scheme == WeightScheme.W4A16


def test_nibble_unpacking_orders():
    packed = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_rows(packed).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert unpack_columns(packed).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    # AWQ: nibble i holds output AWQ_ORDER[i] = (0, 2, 4, 6, 1, 3, 5, 7).
    assert unpack_columns(packed, (0, 2, 4, 6, 1, 3, 5, 7)).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    negative = torch.tensor([[-1]], dtype=torch.int32)  # all nibbles 15: the sign bit is data
    assert unpack_rows(negative).flatten().tolist() == [15] * 8


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize(("symmetric", "act_order"), [(True, False), (False, False), (True, True), (False, True)])
def test_gptq_packing_unpacks_back_exactly(group, symmetric, act_order):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(group))
    codes, zeros, scales, g_idx = gptq_quantize(w, group, symmetric, act_order, seed=group)
    quant = _read({"quant_method": "gptq", "bits": 4, "group_size": group, "sym": symmetric, "desc_act": act_order})
    parts = pack_gptq(codes, zeros, scales, g_idx)
    got = dequantize_int4_parts(parts, quant)
    assert torch.equal(got, int4_dequantized(codes, zeros, scales, g_idx))
    # v2 stores the zeros themselves.
    v2 = _read({"quant_method": "gptq", "bits": 4, "group_size": group, "checkpoint_format": "gptq_v2"})
    assert torch.equal(dequantize_int4_parts(pack_gptq(codes, zeros, scales, g_idx, zero_offset=0), v2), got)
    # Dequantization is close to the float weight (a real quantization, not noise).
    assert (got - w).abs().max() <= scales.float().max() * 0.51


def test_awq_gemm_packing_unpacks_back_exactly():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(5))
    codes, zeros, scales, g_idx = gptq_quantize(w, 64, False, False)
    quant = _read({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"})
    got = dequantize_int4_parts(pack_awq(codes, zeros, scales), quant)
    assert torch.equal(got, int4_dequantized(codes, zeros, scales, g_idx))


def test_resolving_a_model_reads_its_quantization_config(tmp_path):
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import resolve_model
    from max.testing.tiny_checkpoints import llama_config, write_config_only

    def resolve(entry, **flags):
        path = write_config_only(tmp_path / str(len(list(tmp_path.iterdir()))), {**llama_config(), "quantization_config": entry})
        return resolve_model(PipelineConfig(model_path=str(path), load_format="dummy", **flags), register_all())

    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True}
    assert resolve(gptq).plan.checkpoint_quantization.desc_act
    with pytest.raises(MaxError, match="quant_method 'bitsandbytes'"):
        resolve({"quant_method": "bitsandbytes"})
    with pytest.raises(MaxError, match="drop --quantization"):
        resolve(gptq, quantization="fp8")
