"""Calibrated KV cache scales of checkpoints (`kv_cache_scales`), on the CPU's FP8 KV cache
emulation: a tiny Llama in llmcompressor's layout (`max.testing.kv_scale_checkpoints`)
loads with an FP8 cache holding the file's scales, and its logits are those of the same
weights given the same scales by hand; other cache dtypes ignore the scales; bad scales are
refused naming file and tensor.
"""

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from max.errors import MaxError
from max.pipelines.architectures import register_all
from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
from max.pipelines.lib.weights import open_safetensors
from max.pipelines.lib.weights.checkpoint import CheckpointTensor
from max.pipelines.lib.weights.kv_cache_scales import kv_scale_role, read_kv_cache_scales
from max.pipelines.lib.weights.quantization_config import read_quantization
from max.testing.engine_probes import prompt_logits
from max.testing.kv_scale_checkpoints import add_kv_cache_scales, calibrate_kv_scales
from max.testing.quantized_checkpoints import quantize_tiny_checkpoint
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

PROMPT = [1] + list(range(300, 330))


@dataclass
class Checkpoints:
    """A float checkpoint, the same calibrated for an FP8 KV cache, and its scales."""

    plain: Path
    calibrated: Path
    k_scales: list[float]
    v_scales: list[float]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Checkpoints:
    """Scales calibrated as llmcompressor does (`calibrate_kv_scales`) on the test's prompt."""
    root = tmp_path_factory.mktemp("kv_scales")
    plain = write_tiny_checkpoint(root / "float", llama_config(), seed=11)
    k_scales, v_scales = calibrate_kv_scales(_engine(plain), PROMPT)
    calibrated = add_kv_cache_scales(shutil.copytree(plain, root / "calibrated"), k_scales, v_scales)
    return Checkpoints(plain, calibrated, k_scales, v_scales)


class _Config:
    """config.json as the attribute object `read_quantization` takes."""

    def __init__(self, directory):
        self.quantization_config = json.loads((directory / "config.json").read_text())["quantization_config"]


def _engine(path, **overrides):
    settings = dict(
        model_path=str(path), quantization_encoding="float32", kv_cache_page_size=4, max_length=128,
        kv_cache_memory=2**20,
    )  # fmt: skip
    settings.update(overrides)
    return build_engine(resolve_model(PipelineConfig(**settings), register_all()))


def _with_scales(engine, k_scales, v_scales):
    for i, (k, v) in enumerate(zip(k_scales, v_scales)):
        engine.kv_cache.k_scales[i].fill_(k)
        engine.kv_cache.v_scales[i].fill_(v)
    return engine


def test_fp8_cache_takes_the_file_s_scales_and_matches_them_given_by_hand(checkpoints):
    c = checkpoints
    auto = _engine(c.calibrated)  # a kv_cache_scheme: auto means fp8, as in vLLM
    explicit = _engine(c.calibrated, kv_cache_dtype="fp8")
    for engine in (auto, explicit):
        assert engine.kv_cache.keys[0].dtype == torch.float8_e4m3fn
        assert [s.item() for s in engine.kv_cache.k_scales] == c.k_scales
        assert [s.item() for s in engine.kv_cache.v_scales] == c.v_scales
    assert len(set(c.k_scales + c.v_scales)) == 6 and 1.0 not in c.k_scales + c.v_scales
    by_hand = _with_scales(_engine(c.plain, kv_cache_dtype="fp8"), c.k_scales, c.v_scales)
    logits = prompt_logits(auto, PROMPT)
    assert torch.equal(logits, prompt_logits(explicit, PROMPT))
    assert torch.equal(logits, prompt_logits(by_hand, PROMPT))
    # The scales matter (scale 1.0 rounds other values), and the cache written and read
    # with them still follows the float32 cache (e4m3's relative precision is the same at
    # any scale whose values stay in its normal range: calibration avoids saturation and
    # subnormals, it does not sharpen the codes, so it is not closer on this tiny model).
    with_one = prompt_logits(_engine(c.plain, kv_cache_dtype="fp8"), PROMPT)
    assert (logits - with_one).abs().max() > 1e-3
    exact = prompt_logits(_engine(c.plain), PROMPT)
    assert torch.nn.functional.cosine_similarity(logits, exact, dim=-1).min() > 0.999


def test_other_cache_dtypes_ignore_the_scales_with_one_log_line(checkpoints, caplog):
    with caplog.at_level(logging.INFO, logger="max.pipelines"):
        engine = _engine(checkpoints.calibrated, kv_cache_dtype="float32")
    ignored = [r for r in caplog.records if "KV cache scales are ignored" in r.getMessage()]
    assert len(ignored) == 1 and "float32" in ignored[0].getMessage()
    assert engine.kv_cache.keys[0].dtype == torch.float32
    assert all(s.item() == 1.0 for s in engine.kv_cache.k_scales + engine.kv_cache.v_scales)
    assert torch.equal(prompt_logits(engine, PROMPT), prompt_logits(_engine(checkpoints.plain), PROMPT))


def test_fp8_weights_with_kv_scales(checkpoints, tmp_path):
    """An llmcompressor FP8 checkpoint (per-tensor weights) that also calibrated the KV cache."""
    c = checkpoints
    quantized, reference = quantize_tiny_checkpoint(c.plain, tmp_path, "ct-tensor")
    add_kv_cache_scales(quantized, c.k_scales, c.v_scales)
    assert read_quantization(_Config(quantized)).strategy == "tensor"
    engine = _engine(quantized)
    assert engine.kv_cache.keys[0].dtype == torch.float8_e4m3fn
    assert [s.item() for s in engine.kv_cache.k_scales] == c.k_scales
    by_hand = _with_scales(_engine(reference, kv_cache_dtype="fp8"), c.k_scales, c.v_scales)
    torch.testing.assert_close(prompt_logits(engine, PROMPT), prompt_logits(by_hand, PROMPT), rtol=0, atol=1e-5)


def test_a_kv_cache_only_scheme_leaves_the_weights_float(checkpoints):
    assert read_quantization(_Config(checkpoints.calibrated)) is None


def test_scale_names_of_the_known_layouts():
    assert kv_scale_role("model.layers.3.self_attn.k_scale") == (3, "k")
    assert kv_scale_role("model.language_model.layers.12.self_attn.v_scale") == (12, "v")
    assert kv_scale_role("model.layers.0.self_attn.attn.k_scale") == (0, "k")
    assert kv_scale_role("model.layers.1.self_attn.k_proj.k_scale") == (1, "k")  # ModelOpt
    assert kv_scale_role("model.layers.1.self_attn.v_proj.output_scale") == (1, "v")  # older compressed-tensors
    assert kv_scale_role("model.layers.2.self_attn.kv_scale") == (2, "kv")
    for other in (
        "model.layers.0.self_attn.k_proj.weight_scale",
        "model.layers.0.self_attn.q_scale",
        "model.layers.0.self_attn.k_proj.input_scale",
        "model.layers.0.mlp.down_proj.output_scale",
    ):
        assert kv_scale_role(other) is None


def _tensor(name: str, value, shape=(1,)) -> CheckpointTensor:
    data = torch.full(shape, value, dtype=torch.float32)
    return CheckpointTensor(name, tuple(shape), "f.safetensors", lambda dtype: data.to(dtype))


def test_one_scale_serves_both_and_layers_past_the_cache_are_skipped():
    checkpoint = {
        "model.layers.0.self_attn.kv_scale": _tensor("model.layers.0.self_attn.kv_scale", 0.5, ()),
        "model.layers.1.self_attn.k_scale": _tensor("model.layers.1.self_attn.k_scale", 0.25),
        "model.layers.2.self_attn.k_scale": _tensor("model.layers.2.self_attn.k_scale", 0.125),
        "model.layers.2.self_attn.v_scale": _tensor("model.layers.2.self_attn.v_scale", 2.0),
        "model.layers.9.self_attn.k_scale": _tensor("model.layers.9.self_attn.k_scale", 3.0),
    }
    assert read_kv_cache_scales(checkpoint, 3) == {0: (0.5, 0.5), 1: (0.25, 0.25), 2: (0.125, 2.0)}


@pytest.mark.parametrize(
    ("value", "shape", "message"),
    [
        (0.0, (1,), "is 0.0; a scale must be a positive finite number"),
        (-0.5, (1,), "is -0.5"),
        (math.nan, (1,), "is nan"),
        (math.inf, (), "is inf"),
        (0.5, (2,), r"has shape \(2,\); only one scale per layer"),
    ],
)
def test_a_bad_scale_is_refused_naming_file_and_tensor(tmp_path, value, shape, message):
    path = tmp_path / "model.safetensors"
    save_file({"model.layers.0.self_attn.v_scale": torch.full(shape, value)}, str(path))
    with pytest.raises(MaxError, match=rf"model\.safetensors: KV cache scale 'model\.layers\.0\.self_attn\.v_scale' {message}"):
        read_kv_cache_scales(open_safetensors([path]), 3)


def test_a_bad_scale_stops_an_fp8_engine_and_not_a_float_one(checkpoints, tmp_path):
    bad = shutil.copytree(checkpoints.plain, tmp_path / "bad")
    add_kv_cache_scales(bad, (0.01, 0.0, 0.01), checkpoints.v_scales)
    with pytest.raises(MaxError, match=r"'model\.layers\.1\.self_attn\.k_scale' is 0\.0"):
        _engine(bad)
    assert _engine(bad, kv_cache_dtype="float32").kv_cache.keys[0].dtype == torch.float32


def test_every_tensor_parallel_rank_takes_the_scales(checkpoints):
    """2 CPU ranks over gloo: each caches its KV head with the file's scales (a rank left at
    1.0 would move the logits by ~1e-2, the ranks' reduction order by ~1e-6)."""
    c = checkpoints
    engine = _engine(c.calibrated, tensor_parallel_size=2)
    try:
        assert engine.kv_cache.params.num_kv_heads == 1
        single = prompt_logits(_engine(c.calibrated), PROMPT)
        torch.testing.assert_close(prompt_logits(engine, PROMPT), single, rtol=0, atol=1e-4)
    finally:
        engine.close()


def test_a_per_head_scheme_is_refused_before_loading_unless_the_cache_is_not_fp8(checkpoints, tmp_path):
    per_head = shutil.copytree(checkpoints.calibrated, tmp_path / "per_head")
    config = json.loads((per_head / "config.json").read_text())
    config["quantization_config"]["kv_cache_scheme"]["strategy"] = "attn_head"
    (per_head / "config.json").write_text(json.dumps(config))
    for kv_cache_dtype in ("auto", "fp8"):
        settings = PipelineConfig(model_path=str(per_head), quantization_encoding="float32", kv_cache_dtype=kv_cache_dtype)
        with pytest.raises(MaxError, match="kv_cache_scheme has strategy 'attn_head'.*--kv-cache-dtype bfloat16"):
            resolve_model(settings, register_all())
    assert _engine(per_head, kv_cache_dtype="float32").kv_cache.keys[0].dtype == torch.float32


def test_a_non_fp8_scheme_leaves_auto_to_the_model_dtype(checkpoints, tmp_path):
    int8 = shutil.copytree(checkpoints.plain, tmp_path / "int8")
    config = json.loads((int8 / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "config_groups": {},
        "kv_cache_scheme": {"num_bits": 8, "type": "int", "strategy": "tensor"},
    }  # fmt: skip
    (int8 / "config.json").write_text(json.dumps(config))
    resolved = resolve_model(PipelineConfig(model_path=str(int8), quantization_encoding="float32"), register_all())
    assert resolved.config.kv_cache_dtype == "auto" and resolved.plan.kv_cache_dtype == torch.float32
