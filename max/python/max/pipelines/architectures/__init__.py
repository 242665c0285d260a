"""The registered architectures: one folder each, listed in `ARCHITECTURES`.

To add one, copy a folder (or run `pipelines new-architecture`), then add it here.
"""

from max.pipelines.architectures.llama3 import llama3_arch
from max.pipelines.lib import PIPELINE_REGISTRY, PipelineRegistry, SupportedArchitecture

ARCHITECTURES: list[SupportedArchitecture] = [
    llama3_arch,
]


def register_all(registry: PipelineRegistry = PIPELINE_REGISTRY) -> PipelineRegistry:
    """Registers every built-in architecture (idempotent)."""
    for arch in ARCHITECTURES:
        if arch.name not in registry:
            registry.register(arch)
    return registry


__all__ = ["ARCHITECTURES", "register_all"]
