"""DeepSeek-V2's network and pipeline model: Llama's pre-norm blocks with latent attention
and (after the first `first_k_dense_replace` layers) routed plus shared experts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from max.errors import MaxError
from max.kv_cache import KVCacheParams, kv_cache_dtype
from max.nn import GatedMLP, RMSNorm, RotaryEmbedding, SparseMoE, Transformer
from max.nn.latent_attention import LatentAttention, latent_cache_width
from max.pipelines.lib import PipelineConfig, PipelineModel

from .model_config import DeepseekV2Config


class DeepseekV2DecoderLayer(nn.Module):
    """Latent attention then the MLP (experts or dense), each behind an RMSNorm."""

    returns_residual_pair = True

    def __init__(self, c: DeepseekV2Config, index: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.norm_eps)
        self.self_attn = LatentAttention(
            index, c.hidden_size, c.num_heads, q_lora_rank=c.q_lora_rank, kv_lora_rank=c.kv_lora_rank,
            qk_nope_head_dim=c.qk_nope_head_dim, qk_rope_head_dim=c.head_dim, v_head_dim=c.v_head_dim,
            rotary=rotary, norm_eps=c.norm_eps, scale=c.attention_scale, bias=c.qkv_bias,
        )  # fmt: skip
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.norm_eps)
        if index in c.moe_layers:
            self.mlp = SparseMoE(c.hidden_size, c.moe, c.hidden_act)
        else:
            self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `DecoderLayer.forward`: the hidden state travels as (output, residual)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x, residual = self.post_attention_layernorm(self.self_attn(x, positions), residual)
        return self.mlp(x), residual


class DeepseekV2Transformer(Transformer):
    """The generic decoder with DeepSeek-V2's blocks."""

    def layer(self, index: int) -> nn.Module:
        return DeepseekV2DecoderLayer(self.config, index, self.rotary)


class DeepseekV2Model(PipelineModel):
    """Runs `DeepseekV2ForCausalLM` checkpoints, on the CPU or one GPU (where decode steps,
    with absorbed latent attention, replay CUDA graphs)."""

    config_class = DeepseekV2Config

    @classmethod
    def get_kv_params(cls, hf_config: Any, pipeline_config: PipelineConfig, dtype: torch.dtype) -> KVCacheParams:
        """One latent row per token and layer (kv_lora_rank + qk_rope_head_dim values), held
        as a one-head key half and value half (see `max.nn.latent_attention`)."""
        stored = kv_cache_dtype(pipeline_config.kv_cache_dtype, dtype)
        if stored != dtype:
            raise MaxError(f"--kv-cache-dtype {pipeline_config.kv_cache_dtype} is not supported with latent attention")
        width = latent_cache_width(hf_config.kv_lora_rank, hf_config.qk_rope_head_dim)
        return KVCacheParams(cls.get_num_layers(hf_config), 1, width, pipeline_config.kv_cache_page_size, stored)

    def build_network(self) -> nn.Module:
        return DeepseekV2Transformer(self.model_config)
