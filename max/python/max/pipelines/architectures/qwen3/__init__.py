"""Qwen3 (`Qwen3ForCausalLM`) and Qwen3-MoE (`Qwen3MoeForCausalLM`)."""

from .arch import qwen3_arch, qwen3_moe_arch

ARCHITECTURES = [qwen3_arch, qwen3_moe_arch]

__all__ = ["ARCHITECTURES", "qwen3_arch", "qwen3_moe_arch"]
