"""Qwen2.5-VL's Hugging Face config (text and vision parts), read into a `Qwen25VLConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from max.nn import DecoderConfig
from max.nn.vision import VisionConfig
from max.pipelines.lib.hub.hf_config import rope_parameters, text_config
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Qwen25VLConfig(DecoderConfig):
    """Qwen2's decoder (biases on q, k and v) with M-RoPE sections, and the vision tower."""

    vision: VisionConfig | None = None
    mrope_section: list[int] = field(default_factory=list)
    image_token_id: int = -1

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Qwen25VLConfig:
        """Reads a `Qwen2_5_VLConfig` (flat config.json files keep the text fields at the top
        level; transformers moves them into `text_config`)."""
        text = text_config(hf_config)
        rope = rope_parameters(text)
        # "mrope" names the sectioned layout, not a frequency schedule: the frequencies are
        # the default ones (transformers reads it so too).
        section = rope.pop("mrope_section", None) or [16, 24, 24]
        if rope.get("rope_type") == "mrope" or rope.get("type") == "mrope":
            rope["rope_type"] = "default"
        v = hf_config.vision_config
        vision_rope = getattr(v, "rope_parameters", None) or {}
        vision = VisionConfig(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            out_hidden_size=v.out_hidden_size,
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            spatial_merge_size=v.spatial_merge_size,
            in_channels=v.in_channels,
            window_size=v.window_size,
            fullatt_block_indexes=list(v.fullatt_block_indexes),
            hidden_act=v.hidden_act,
            rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
        )
        tied = bool(getattr(hf_config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
        return decoder_config_from_hf(
            cls,
            text,
            max_seq_len,
            qkv_bias=True,
            o_bias=False,
            rope_parameters=rope,
            tie_word_embeddings=tied,
            vision=vision,
            mrope_section=list(section),
            image_token_id=int(hf_config.image_token_id),
        )
