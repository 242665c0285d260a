"""OLMo 2 checkpoint names -> model names."""

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names (`model.layers.0.self_attn.q_norm.weight`) minus `model.`."""
    return hf_to_model_names(checkpoint, hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names: `post_attention_norm` / `post_ffw_norm` are the norms after attention
    and after the MLP; Q and K are not permuted (OLMo 2 rotates halves)."""
    return rename_gguf(checkpoint)
