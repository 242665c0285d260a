"""Mistral checkpoint names -> model names.

llama.cpp stores Mistral as a `llama` GGUF, which the Llama architecture reads."""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names (`model.layers.0.self_attn.q_proj.weight`) minus `model.`."""
    return hf_to_model_names(checkpoint, hf_config)
