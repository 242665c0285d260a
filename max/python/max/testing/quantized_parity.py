"""What the tests of pre-quantized checkpoints share: the tiny float Llama they quantize
(`quantize_tiny_checkpoint`), engines built on it, transformers' logits of the dequantized
reference, the quantized layers an engine ended up holding, and the check that a GPU's
lower-precision logits point the way the CPU's do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from max.pipelines.architectures import register_all
from max.pipelines.lib import LLMEngine, PipelineConfig, build_engine, resolve_model
from max.testing.engine_probes import prompt_logits
from max.testing.parity import PROMPTS, build_tiny_engine
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

# 128 input features so that groups of 128 fit; two layers keep it fast.
QUANTIZABLE_CONFIG = llama_config(hidden_size=128, intermediate_size=256, num_hidden_layers=2)
MAX_LENGTH = 128


def write_quantizable_checkpoint(directory: Path) -> Path:
    """The float32 tiny Llama (QUANTIZABLE_CONFIG, seed 3) the quantized checkpoints start from."""
    return write_tiny_checkpoint(directory, QUANTIZABLE_CONFIG, seed=3)


def quantized_engine(path: Path | str, **overrides: Any) -> LLMEngine:
    """An engine on a tiny (quantized) checkpoint, `overrides` being PipelineConfig fields."""
    return build_tiny_engine(path, **{"max_length": MAX_LENGTH, **overrides})


def device_engine(path: Path | str, devices: str, **overrides: Any) -> LLMEngine:
    """An engine for a GPU-against-CPU comparison on `devices` ("gpu" or "cpu"): pages of
    16 and batches of 8, as on the GPU (the same settings on both sides)."""
    return quantized_engine(path, devices=devices, **{"kv_cache_page_size": 16, "max_batch_size": 8, **overrides})


def engine_with_plan(path: Path | str, plan: dict[str, Any], **overrides: Any) -> LLMEngine:
    """An engine whose resolved plan has the `plan` fields replaced: what another device
    would run (e.g. the FP8 or W4A16 weight scheme of a GPU), emulated on the CPU."""
    settings = {"model_path": str(path), "kv_cache_page_size": 4, "max_length": MAX_LENGTH, **overrides}
    resolved = resolve_model(PipelineConfig(**settings), register_all())
    return build_engine(dataclasses.replace(resolved, plan=dataclasses.replace(resolved.plan, **plan)))


def reference_logits(reference_dir: Path | str, prompts: Sequence[Sequence[int]] = PROMPTS) -> list[torch.Tensor]:
    """transformers' float32 logits [len(prompt), vocab] of each prompt on `reference_dir`
    (the dequantized checkpoint)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([list(p)])).logits[0] for p in prompts]


def layers_of(engine: LLMEngine, cls: type) -> list[torch.nn.Module]:
    """The engine's model's layers of class `cls` (Int4Linear, Fp8Linear, ...)."""
    return [m for m in engine.runner.model.model.modules() if isinstance(m, cls)]


def assert_same_direction(gpu: LLMEngine, cpu: LLMEngine, prompts: Sequence[Sequence[int]] = PROMPTS) -> None:
    """Every position's logits on `gpu` (e.g. bfloat16 activations) point the way the CPU's
    float32 ones do: cosine similarity above 0.99."""
    for prompt in prompts:
        ours, reference = prompt_logits(gpu, prompt).float().cpu(), prompt_logits(cpu, prompt)
        assert torch.nn.functional.cosine_similarity(ours, reference, dim=-1).min() > 0.99
