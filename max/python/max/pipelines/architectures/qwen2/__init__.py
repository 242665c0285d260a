"""Qwen2 and Qwen2.5: `Qwen2ForCausalLM`."""

from .arch import qwen2_arch

ARCHITECTURES = [qwen2_arch]

__all__ = ["ARCHITECTURES", "qwen2_arch"]
