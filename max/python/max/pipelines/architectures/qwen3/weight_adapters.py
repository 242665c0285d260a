"""Qwen3 checkpoint names -> model names."""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.` (experts are stored one by one)."""
    return hf_to_model_names(checkpoint, hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names (Q and K are not permuted for qwen3); Qwen3-MoE's stacked experts are
    handed out one per expert by `rename_gguf`."""
    return rename_gguf(checkpoint)
