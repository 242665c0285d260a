"""Llama 3.x (and SmolLM2): `LlamaForCausalLM`."""

from .arch import llama3_arch

ARCHITECTURES = [llama3_arch]

__all__ = ["ARCHITECTURES", "llama3_arch"]
