"""OLMo 2 (`Olmo2ForCausalLM`): norms after attention and MLP, q/k norms over the whole
projection."""

from .arch import olmo2_arch

ARCHITECTURES = [olmo2_arch]

__all__ = ["ARCHITECTURES", "olmo2_arch"]
