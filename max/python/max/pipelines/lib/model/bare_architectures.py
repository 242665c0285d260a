"""Bare transformers (`*Model`, no LM head) as sentence-transformers saves embedding models.

An embedding checkpoint saved by sentence-transformers names the headless class in its
config.json (`Qwen2Model`, `LlamaModel`, `Gemma3TextModel`...), whose weights are the causal
LM's without `model.` and without `lm_head`. Such a name runs on the registered architecture
of the same model type: transformers' own auto-class tables say which causal LM a bare class
belongs to (`gemma3_text`: `Gemma3TextModel` and `Gemma3ForCausalLM`), so no folder lists its
bare name. Only text architectures (`*ForCausalLM`) qualify: a multimodal bare class (e.g.
`Gemma3Model`) holds more than a decoder.
"""

from __future__ import annotations

import functools


@functools.cache
def _bare_to_causal_lm() -> dict[str, str]:
    """Bare class name -> the causal LM class of the same model type (transformers' tables;
    imported on first use only, as the lookup is needed for bare names alone)."""
    from transformers.models.auto import modeling_auto

    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    found: dict[str, set[str]] = {}
    for model_type, bare in modeling_auto.MODEL_MAPPING_NAMES.items():
        lm = causal.get(model_type)
        if isinstance(bare, str) and isinstance(lm, str) and lm.endswith("ForCausalLM"):
            found.setdefault(bare, set()).add(lm)
    # A bare class shared by model types with different causal LMs is ambiguous: left out.
    return {bare: next(iter(lms)) for bare, lms in found.items() if len(lms) == 1}


def causal_lm_of_bare_model(name: str) -> str | None:
    """The causal-LM architecture whose headless transformer transformers calls `name`
    (`Qwen2Model` -> `Qwen2ForCausalLM`); None when `name` is no such bare class."""
    if not name.endswith("Model"):
        return None
    return _bare_to_causal_lm().get(name)
