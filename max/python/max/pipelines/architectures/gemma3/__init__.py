"""Gemma 3 text models: `Gemma3ForCausalLM`."""

from .arch import gemma3_arch

ARCHITECTURES = [gemma3_arch]

__all__ = ["ARCHITECTURES", "gemma3_arch"]
