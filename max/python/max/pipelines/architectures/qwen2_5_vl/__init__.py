"""Qwen2.5-VL: `Qwen2_5_VLForConditionalGeneration` (images and text in, text out)."""

from .arch import qwen2_5_vl_arch

ARCHITECTURES = [qwen2_5_vl_arch]

__all__ = ["ARCHITECTURES", "qwen2_5_vl_arch"]
