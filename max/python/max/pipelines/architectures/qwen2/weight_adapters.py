"""Qwen2 checkpoint names -> model names."""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus the `model.` prefix."""
    return hf_to_model_names(checkpoint, hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names; qwen2 GGUF files keep Q and K in Hugging Face's layout."""
    return rename_gguf(checkpoint)
