"""Phi-3 checkpoint names -> model names: the fused `qkv_proj` and `gate_up_proj` (GGUF's
`attn_qkv` and `ffn_up`) are split into the q/k/v and gate/up parts that `max.nn`'s layers
are filled from."""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.hub.hf_config import head_dim
from max.pipelines.lib.weights.fused_tensors import split_rows
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names

# llama.cpp keeps Phi-3's fused projections fused (gate rows before up rows in `ffn_up`).
_GGUF_BLOCK_NAMES = {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}


def _split_fused(named: Checkpoint, hf_config: Any) -> Checkpoint:
    """Model names, with each fused projection split by rows."""
    d = head_dim(hf_config)
    q = hf_config.num_attention_heads * d
    kv = (hf_config.num_key_value_heads or hf_config.num_attention_heads) * d
    inter = hf_config.intermediate_size
    out = {}
    for name, tensor in named.items():
        prefix, _, kind = name.rpartition(".")
        if prefix.endswith("self_attn.qkv_proj"):
            parts = zip(("q_proj", "k_proj", "v_proj"), split_rows(tensor, (q, kv, kv)))
        elif prefix.endswith("mlp.gate_up_proj"):
            parts = zip(("gate_proj", "up_proj"), split_rows(tensor, (inter, inter)))
        else:
            out[name] = tensor
            continue
        base = prefix.rpartition(".")[0]
        out.update({f"{base}.{part}.{kind}": t for part, t in parts})
    return out


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.`, fused projections split by rows."""
    return _split_fused(hf_to_model_names(checkpoint, hf_config), hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names (Q and K not permuted: Phi-3 rotates halves), fused projections split;
    the LongRoPE factor tensors are read into the config, not the model."""
    return _split_fused(rename_gguf(checkpoint, _GGUF_BLOCK_NAMES), hf_config)
