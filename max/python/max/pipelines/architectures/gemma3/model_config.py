"""Gemma 3's Hugging Face config (`Gemma3TextConfig`), read into a `Gemma3Config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from max.nn import DecoderConfig
from max.pipelines.lib.hub.hf_config import rope_parameters
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Gemma3Config(DecoderConfig):
    """Gemma 3: local (sliding-window) layers with their own rope base and global layers
    with the (possibly scaled) main rope, in the configured `layer_types` pattern; scores
    scaled by query_pre_attn_scalar**-0.5; optional soft-capping of the final logits.

    `attn_logit_softcapping` is read by transformers' Gemma 3 config but never applied by
    its attention (unlike Gemma 2's); we follow the reference and do not apply it either.
    """

    local_rope_parameters: dict = field(default_factory=dict)

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Gemma3Config:
        """Reads a `Gemma3TextConfig` (transformers 5 nests rope parameters by layer type;
        older releases keep the local base in `rope_local_base_freq`)."""
        if "sliding_attention" in (getattr(hf_config, "rope_parameters", None) or {}):
            local = rope_parameters(hf_config, "sliding_attention")
        else:
            local = {"rope_type": "default", "rope_theta": getattr(hf_config, "rope_local_base_freq", 10000.0)}
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config_from_hf(
            cls,
            hf_config,
            max_seq_len,
            rope_parameters=rope_parameters(hf_config, "full_attention"),
            local_rope_parameters=local,
            hidden_act=getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
            attention_scale=float(hf_config.query_pre_attn_scalar) ** -0.5,
            qkv_bias=bias,
            o_bias=bias,
            qk_norm=True,
            final_logit_softcapping=getattr(hf_config, "final_logit_softcapping", None),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        )
