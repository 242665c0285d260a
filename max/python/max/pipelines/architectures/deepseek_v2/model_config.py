"""DeepSeek-V2's Hugging Face config, read into a `DeepseekV2Config`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig, MoEConfig
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class DeepseekV2Config(DecoderConfig):
    """DeepSeek-V2: latent attention (`head_dim` is the rotary part's width, which the rope
    tables use); MoE layers from `first_k_dense_replace` on, with shared experts."""

    q_lora_rank: int | None = None
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> DeepseekV2Config:
        """Reads a `DeepseekV2Config`: YaRN's mscale_all_dim also scales the scores (by its
        mscale squared); `topk_method` "group_limited_greedy" limits routing to groups."""
        config = decoder_config_from_hf(cls, hf_config, max_seq_len)
        rope = config.rope_parameters
        scale = (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim) ** -0.5
        if rope["rope_type"] != "default" and rope.get("mscale_all_dim"):
            mscale = 0.1 * rope["mscale_all_dim"] * math.log(rope["factor"]) + 1.0 if rope["factor"] > 1 else 1.0
            scale *= mscale * mscale
        grouped = getattr(hf_config, "topk_method", "greedy") == "group_limited_greedy"
        config.moe = MoEConfig(
            num_experts=hf_config.n_routed_experts,
            num_experts_per_tok=hf_config.num_experts_per_tok,
            moe_intermediate_size=hf_config.moe_intermediate_size,
            norm_topk_prob=bool(getattr(hf_config, "norm_topk_prob", False)),
            num_shared_experts=hf_config.n_shared_experts or 0,
            routed_scaling_factor=float(hf_config.routed_scaling_factor),
            num_groups=hf_config.n_group if grouped else None,
            topk_groups=hf_config.topk_group if grouped else None,
        )
        config.moe_layers = list(range(hf_config.first_k_dense_replace, hf_config.num_hidden_layers))
        config.attention_scale = scale
        config.qkv_bias = bool(getattr(hf_config, "attention_bias", False))
        config.q_lora_rank = hf_config.q_lora_rank
        config.kv_lora_rank = hf_config.kv_lora_rank
        config.qk_nope_head_dim = hf_config.qk_nope_head_dim
        config.v_head_dim = hf_config.v_head_dim
        config.head_dim = hf_config.qk_rope_head_dim
        return config
