"""Refusing checkpoints whose attention is bidirectional.

Every decoder here attends causally over a paged KV cache. Some embedding checkpoints built
on decoder architectures do not: EmbeddingGemma's config sets `use_bidirectional_attention`
(transformers' `Gemma3TextModel` then masks nothing in full-attention layers and centres
sliding windows on each token), and some Qwen2-based embedders set `is_causal: false` for
their remote code. Computed causally their vectors would be silently wrong, so they are
refused at start-up.
"""

from __future__ import annotations

from typing import Any

from max.errors import MaxError
from max.pipelines.lib.hub.hf_config import text_config


def check_causal_attention(hf_config: Any, architecture: str) -> None:
    """Raises MaxError when the config asks for bidirectional attention (see the module
    docstring)."""
    config = text_config(hf_config)
    if getattr(config, "use_bidirectional_attention", False):
        setting = "use_bidirectional_attention: true"
    elif getattr(config, "is_causal", True) is False:
        setting = "is_causal: false"
    else:
        return
    raise MaxError(
        f"{architecture}: the config sets {setting}, so tokens attend to later tokens; "
        "bidirectional attention is not supported here (every model attends causally), and "
        "computing it causally would give different embeddings"
    )
