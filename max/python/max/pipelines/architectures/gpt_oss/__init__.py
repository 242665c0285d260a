"""gpt-oss: `GptOssForCausalLM`."""

from .arch import gpt_oss_arch

ARCHITECTURES = [gpt_oss_arch]

__all__ = ["ARCHITECTURES", "gpt_oss_arch"]
