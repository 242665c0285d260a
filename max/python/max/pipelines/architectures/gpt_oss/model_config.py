"""gpt-oss's Hugging Face config (`GptOssConfig`), read into a `DecoderConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.nn import DecoderConfig, MoEConfig
from max.nn.moe import TOPK_SOFTMAX
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class GptOssConfig(DecoderConfig):
    """gpt-oss: every layer routes each token to `num_experts_per_tok` of
    `num_local_experts` experts (router with a bias; softmax over the k largest logits);
    the experts' projections have biases and their activation is the clamped SwiGLU
    (`swiglu_alpha`, `swiglu_limit`; the config's `hidden_act` does not describe it).
    Attention has biases on q, k, v and o (`attention_bias`) and a learned sink per head;
    layers follow `layer_types` (by default sliding-window and full attention in turn);
    rope is YaRN as configured. `intermediate_size` is the experts' width (no dense MLP).
    """

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> GptOssConfig:
        """Reads a `GptOssConfig`."""
        bias = bool(getattr(hf_config, "attention_bias", True))
        moe = MoEConfig(
            num_experts=int(hf_config.num_local_experts),
            num_experts_per_tok=int(hf_config.num_experts_per_tok),
            moe_intermediate_size=int(hf_config.intermediate_size),
            routing=TOPK_SOFTMAX,
            router_bias=True,
            expert_bias=True,
            activation="clamped_swiglu",
            swiglu_alpha=float(getattr(hf_config, "swiglu_alpha", 1.702)),
            swiglu_limit=float(getattr(hf_config, "swiglu_limit", 7.0)),
        )
        return decoder_config_from_hf(
            cls,
            hf_config,
            max_seq_len,
            qkv_bias=bias,
            o_bias=bias,
            attention_sinks=True,
            moe=moe,
            moe_layers=list(range(hf_config.num_hidden_layers)),
        )
