"""OLMo 2's Hugging Face config, read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Olmo2Config(DecoderConfig):
    """OLMo 2: `attention_bias` on q, k, v and o; q and k RMS-normalized over all their
    heads together (see `Olmo2DecoderLayer` for the block)."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Olmo2Config:
        """Reads an `Olmo2Config`."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config_from_hf(cls, hf_config, max_seq_len, qkv_bias=bias, o_bias=bias, qk_norm=True)
