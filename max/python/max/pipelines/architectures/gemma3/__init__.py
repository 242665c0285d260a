"""Gemma 3: text models (`Gemma3ForCausalLM`) and models with images
(`Gemma3ForConditionalGeneration`)."""

from .arch import gemma3_arch, gemma3_vl_arch

ARCHITECTURES = [gemma3_arch, gemma3_vl_arch]

__all__ = ["ARCHITECTURES", "gemma3_arch", "gemma3_vl_arch"]
