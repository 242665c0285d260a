"""Qwen3's Hugging Face configs, read into `DecoderConfig`s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig, MoEConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Qwen3Config(DecoderConfig):
    """Qwen3: RMSNorm over each head of q and k before rope; `attention_bias` on q, k, v, o;
    an explicit `head_dim` (often not hidden_size / heads)."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Qwen3Config:
        """Reads a `Qwen3Config`."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config_from_hf(cls, hf_config, max_seq_len, qk_norm=True, qkv_bias=bias, o_bias=bias)


@dataclass
class Qwen3MoeConfig(DecoderConfig):
    """Qwen3-MoE: Qwen3 attention; a layer routes to experts unless it is listed in
    `mlp_only_layers` or falls between `decoder_sparse_step`s."""

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Qwen3MoeConfig:
        """Reads a `Qwen3MoeConfig`."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        num_experts = int(getattr(hf_config, "num_experts", 0) or 0)
        step = int(getattr(hf_config, "decoder_sparse_step", 1) or 1)
        dense = set(getattr(hf_config, "mlp_only_layers", None) or [])
        moe_layers = [
            i
            for i in range(hf_config.num_hidden_layers)
            if i not in dense and num_experts > 0 and (i + 1) % step == 0
        ]
        moe = MoEConfig(
            num_experts=num_experts,
            num_experts_per_tok=int(hf_config.num_experts_per_tok),
            moe_intermediate_size=int(hf_config.moe_intermediate_size),
            norm_topk_prob=bool(getattr(hf_config, "norm_topk_prob", False)),
        )
        return decoder_config_from_hf(
            cls, hf_config, max_seq_len, qk_norm=True, qkv_bias=bias, o_bias=bias, moe=moe, moe_layers=moe_layers
        )
