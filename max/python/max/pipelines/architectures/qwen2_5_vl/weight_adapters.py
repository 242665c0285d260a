"""Qwen2.5-VL checkpoint names -> model names.

Checkpoints name the language model `model.*` and the vision tower `visual.*` (the layout
of the published checkpoints, which transformers 5 still writes); transformers 4.5x wrote
`model.language_model.*` and `model.visual.*`. Both map to our names: `layers.*`, `embed_tokens`, `norm`, `lm_head` and `visual.*`.
"""

from __future__ import annotations

from typing import Any

from max.pipelines.lib import Checkpoint

_PREFIXES = (("model.language_model.", ""), ("model.visual.", "visual."), ("model.", ""))


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Checkpoint names without their language-model prefix; the head dropped when tied."""
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    out = {}
    for name, tensor in checkpoint.items():
        if tied and name == "lm_head.weight":
            continue
        for prefix, replacement in _PREFIXES:
            if name.startswith(prefix):
                name = replacement + name[len(prefix) :]
                break
        out[name] = tensor
    return out
