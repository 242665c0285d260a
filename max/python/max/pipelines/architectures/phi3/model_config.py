"""Phi-3's Hugging Face config, read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf, windowed_everywhere


@dataclass
class Phi3Config(DecoderConfig):
    """Phi-3: Llama's blocks; rope `longrope` (128k models: short and long factors, see
    `max.nn.rotary_embedding`) or default (4k), possibly over part of each head
    (`partial_rotary_factor`); a sliding window on every layer when the config sets one."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Phi3Config:
        """Reads a `Phi3Config`."""
        return decoder_config_from_hf(cls, hf_config, max_seq_len, layer_types=windowed_everywhere(hf_config))
