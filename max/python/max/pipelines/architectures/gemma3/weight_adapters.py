"""Gemma 3 checkpoint names -> model names."""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names

# In Gemma GGUF files `ffn_norm` is the norm before the MLP (Llama's post-attention norm).
_GGUF_BLOCK_NAMES = {"ffn_norm": "pre_feedforward_layernorm"}


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.` (the head is tied to the embedding)."""
    return hf_to_model_names(checkpoint, hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names; llama.cpp stores Gemma's norm weights as 1 + w, undone here."""
    out = rename_gguf(checkpoint, _GGUF_BLOCK_NAMES)
    for name, tensor in list(out.items()):
        if "norm" in name:
            out[name] = tensor.transformed(lambda w: w - 1)
    return out
