"""Turning LoRA on in a built engine: its registry over the model's slots, the scheduler's
limit on adapters per step, and the adapters `--lora-modules` names."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from max.errors import MaxError
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.lora.peft_adapter import adapter_rank
from max.pipelines.lib.lora.registry import LoRARegistry

if TYPE_CHECKING:
    from max.pipelines.lib.engine.llm_engine import LLMEngine


def parse_lora_modules(specs: list[str]) -> list[tuple[str, str]]:
    """`--lora-modules` NAME=PATH pairs as (name, path)."""
    pairs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise MaxError(f"--lora-modules {spec!r}: give NAME=PATH")
        pairs.append((name.strip(), path.strip()))
    return pairs


def enable_lora(engine: LLMEngine, config: PipelineConfig) -> LoRARegistry:
    """Gives `engine` a LoRA registry over its model's adapter slots (the model must have
    been built with them: `config.enable_lora`) and registers `--lora-modules`; a bad
    adapter closes the engine and raises MaxError."""
    targets = engine.model.lora
    if targets is None:
        raise MaxError("the model was built without LoRA slots (--enable-lora)")
    registry = LoRARegistry(targets, config.max_cpu_loras)
    try:
        for name, path in parse_lora_modules(config.lora_modules):
            registry.add(name, path)
    except BaseException:
        engine.close()
        raise
    engine.lora = registry
    engine.scheduler.max_loras = registry.max_loras
    return registry


def with_one_adapter(config: PipelineConfig, name: str, path: str) -> PipelineConfig:
    """`config` with LoRA on and adapter `path` registered as `name` (`generate --lora`),
    its slots as wide as the adapter's rank when that is over `--max-lora-rank`."""
    rank = max(config.max_lora_rank, adapter_rank(path))
    modules = [*config.lora_modules, f"{name}={path}"]
    return dataclasses.replace(config, enable_lora=True, lora_modules=modules, max_lora_rank=rank)
