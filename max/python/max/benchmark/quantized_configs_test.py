"""The config-only quantized folders resolve to the checkpoint path they stand for: the
format detected from config.json, the plan's weight scheme (on this CPU: FP8 dequantized,
int4 kept packed)."""

import pytest

from max.benchmark.quantized_configs import QUANTIZATION_CONFIGS, write_quantized_config
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, resolve_model
from max.pipelines.lib.plan import WeightScheme


@pytest.mark.parametrize(("kind", "scheme"), [("fp8", WeightScheme.FLOAT), ("fp8-block", WeightScheme.FLOAT), ("gptq", WeightScheme.W4A16), ("awq", WeightScheme.W4A16)])
def test_quantized_config_resolves_to_its_scheme(tmp_path, kind, scheme):
    assert kind in QUANTIZATION_CONFIGS
    path = write_quantized_config("SmolLM2-135M", kind, tmp_path / kind)
    resolved = resolve_model(PipelineConfig(model_path=str(path), load_format="dummy", max_length=256), register_all())
    assert resolved.plan.weight_scheme == scheme
    assert resolved.plan.checkpoint_quantization.format == QUANTIZATION_CONFIGS[kind]["quant_method"]
