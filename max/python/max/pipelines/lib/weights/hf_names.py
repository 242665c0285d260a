"""Hugging Face checkpoint names, mapped to the module names of `max.nn` decoders.

Our modules are named as transformers names them inside `model.` (`layers.0.self_attn.q_proj`,
`mlp.experts.3.up_proj`...), so the mapping is a prefix strip plus two drops: the rotary
frequency buffers some old checkpoints carry, and the `lm_head.weight` copy of a model whose
head is tied to its embedding.
"""

from __future__ import annotations

from typing import Any

from max.pipelines.lib.weights.checkpoint import Checkpoint


def hf_to_model_names(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """The checkpoint under model names (see the module docstring)."""
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    out = {}
    for name, tensor in checkpoint.items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        out[name.removeprefix("model.")] = tensor
    return out
