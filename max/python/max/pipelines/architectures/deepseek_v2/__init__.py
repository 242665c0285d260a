"""DeepSeek-V2 (`DeepseekV2ForCausalLM`): multi-head latent attention, shared-expert MoE."""

from .arch import deepseek_v2_arch

ARCHITECTURES = [deepseek_v2_arch]

__all__ = ["ARCHITECTURES", "deepseek_v2_arch"]
