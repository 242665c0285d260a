"""The registered architectures: one folder each, listed in `ARCHITECTURES`.

To add one, copy a folder (or run `pipelines new-architecture`), then add it here and to
this package's BUILD.bazel.
"""

from max.pipelines.architectures import (
    deepseek_v2,
    gemma3,
    gpt_oss,
    llama3,
    mistral,
    olmo2,
    phi3,
    qwen2,
    qwen2_5_vl,
    qwen3,
)
from max.pipelines.lib import PIPELINE_REGISTRY, PipelineRegistry, SupportedArchitecture

ARCHITECTURES: list[SupportedArchitecture] = [
    *llama3.ARCHITECTURES,
    *qwen2.ARCHITECTURES,
    *qwen3.ARCHITECTURES,
    *gemma3.ARCHITECTURES,
    *gpt_oss.ARCHITECTURES,
    *qwen2_5_vl.ARCHITECTURES,
    *mistral.ARCHITECTURES,
    *phi3.ARCHITECTURES,
    *olmo2.ARCHITECTURES,
    *deepseek_v2.ARCHITECTURES,
]


def register_all(registry: PipelineRegistry = PIPELINE_REGISTRY) -> PipelineRegistry:
    """Registers every built-in architecture (idempotent)."""
    for arch in ARCHITECTURES:
        if arch.name not in registry:
            registry.register(arch)
    return registry


__all__ = ["ARCHITECTURES", "register_all"]
