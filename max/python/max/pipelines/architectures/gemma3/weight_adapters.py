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


# Gemma3ForConditionalGeneration's names, as the published checkpoints write them
# (`language_model.model.*`, `vision_tower.vision_model.*`), as transformers 4.5x wrote them
# (`model.language_model.*`, `model.vision_tower.vision_model.*`, `model.multi_modal_projector.*`)
# and as transformers 5 writes them (`vision_tower.*` without `vision_model.`). First match wins.
_VL_PREFIXES = (
    ("language_model.model.", ""),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", ""),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def convert_vl_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Checkpoint names -> ours: the decoder's at the top (`layers.*`, `embed_tokens`,
    `norm`), `vision_tower.*`, `multi_modal_projector.*`. The SigLIP pooling head (which
    Gemma 3 never runs) and a tied head are dropped."""
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    out = {}
    for name, tensor in checkpoint.items():
        for prefix, replacement in _VL_PREFIXES:
            if name.startswith(prefix):
                name = replacement + name[len(prefix) :]
                break
        if name.startswith("vision_tower.head.") or (tied and name == "lm_head.weight"):
            continue
        out[name] = tensor
    return out
