"""Llama's Hugging Face config, read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Llama3Config(DecoderConfig):
    """Llama: `attention_bias` puts biases on q, k, v and o; `mlp_bias` on the MLP."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Llama3Config:
        """Reads a `LlamaConfig` (rope scaling default, linear, llama3 or yarn)."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config_from_hf(
            cls,
            hf_config,
            max_seq_len,
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        )
