"""Llama checkpoint names -> model names."""

from __future__ import annotations

from typing import Any

import torch

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names (`model.layers.0.self_attn.q_proj.weight`) minus `model.`."""
    return hf_to_model_names(checkpoint, hf_config)


def _unpermute(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undoes llama.cpp's reordering of each head's rows into its rotary layout."""
    half = w.shape[0] // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names, with the Q and K projections un-permuted back to HF's layout."""
    out = rename_gguf(checkpoint)
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    for name, tensor in list(out.items()):
        if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
            out[name] = tensor.transformed(lambda w: _unpermute(w, heads))
        elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
            out[name] = tensor.transformed(lambda w: _unpermute(w, kv_heads))
    return out
