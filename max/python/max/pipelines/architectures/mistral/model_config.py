"""Mistral's Hugging Face config, read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf, windowed_everywhere


@dataclass
class MistralConfig(DecoderConfig):
    """Mistral: Llama without biases; when `sliding_window` is set (v0.1), every layer
    attends over that many positions only (v0.3 sets none)."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> MistralConfig:
        """Reads a `MistralConfig`."""
        return decoder_config_from_hf(cls, hf_config, max_seq_len, layer_types=windowed_everywhere(hf_config))
