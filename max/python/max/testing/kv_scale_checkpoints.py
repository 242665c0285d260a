"""Tiny checkpoints calibrated for an FP8 KV cache, as llmcompressor writes them.

llmcompressor's KV cache calibration leaves two things in a checkpoint: config.json's
`quantization_config` gets a compressed-tensors `kv_cache_scheme` (8-bit float, one scale
per tensor; with no `config_groups` when only the KV cache was calibrated), written here by
the compressed-tensors package itself; and model.safetensors gets, per decoder layer, the
float32 [1] tensors `model.layers.N.self_attn.k_scale` and `.v_scale` (each the absolute
maximum of the layer's keys or values over the calibration data, divided by 448, e4m3's
largest value), written here by hand, since the package has no writer for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from max.pipelines.lib.engine.llm_engine import LLMEngine
from max.testing.engine_probes import prompt_logits

E4M3_MAX = 448.0


def kv_cache_only_scheme() -> dict:
    """compressed-tensors' quantization_config of a KV-cache-only calibration."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig

    kv = QuantizationArgs(num_bits=8, type="float", strategy="tensor", dynamic=False, symmetric=True)
    config = QuantizationConfig(config_groups={}, kv_cache_scheme=kv, quantization_status="compressed")
    return config.model_dump(mode="json", exclude_none=True)


def calibrate_kv_scales(engine: LLMEngine, prompt: Sequence[int]) -> tuple[list[float], list[float]]:
    """Per-layer (key scales, value scales) calibrated on one prompt through an engine with a
    float KV cache: absmax / 448, rounded to float32 as the checkpoint stores them."""
    prompt_logits(engine, prompt)  # freed pages keep the prompt's keys and values; the rest is 0

    def scale(cache: torch.Tensor) -> float:
        return float((cache.abs().max().float().cpu() / E4M3_MAX).item())

    return [scale(k) for k in engine.kv_cache.keys], [scale(v) for v in engine.kv_cache.values]


def add_kv_cache_scales(directory: Path, k_scales: Sequence[float], v_scales: Sequence[float]) -> Path:
    """Adds per-layer KV cache scales to the checkpoint in `directory`, and a
    `kv_cache_scheme` to its quantization_config (a KV-cache-only one if it has none)."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    tensors = load_file(str(directory / "model.safetensors"))
    for i, (k, v) in enumerate(zip(k_scales, v_scales, strict=True)):
        tensors[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor([k], dtype=torch.float32)
        tensors[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor([v], dtype=torch.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    scheme = kv_cache_only_scheme()
    config.setdefault("quantization_config", scheme)["kv_cache_scheme"] = scheme["kv_cache_scheme"]
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
