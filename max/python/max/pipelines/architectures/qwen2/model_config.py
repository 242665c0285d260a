"""Qwen2's Hugging Face config, read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Qwen2Config(DecoderConfig):
    """Qwen2: biases on q, k and v (not o); sliding-window layers when the config enables
    them (transformers marks them in `layer_types`, from `max_window_layers` on)."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Qwen2Config:
        """Reads a `Qwen2Config`."""
        return decoder_config_from_hf(cls, hf_config, max_seq_len, qkv_bias=True, o_bias=False)
