"""Mistral (`MistralForCausalLM`): Llama's network with a sliding window on every layer."""

from .arch import mistral_arch

ARCHITECTURES = [mistral_arch]

__all__ = ["ARCHITECTURES", "mistral_arch"]
