"""Phi-3 and Phi-3.5 (`Phi3ForCausalLM`): fused projections, LongRoPE."""

from .arch import phi3_arch

ARCHITECTURES = [phi3_arch]

__all__ = ["ARCHITECTURES", "phi3_arch"]
