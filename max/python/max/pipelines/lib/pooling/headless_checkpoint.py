"""Embedding checkpoints without an LM head.

sentence-transformers saves the bare transformer (`Qwen3Model`, no `model.` prefix, no
`lm_head.weight`), and so do several embedding repos whose config still says
`tie_word_embeddings: false`. An embedding model never reads its logits, so such a model is
built with its head tied to the embedding (no tensor to load); the logits of an engine that
also generates would be meaningless, which is why this applies to `--task embed` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open

HEAD_NAMES = ("lm_head.weight", "model.lm_head.weight")


def _tensor_names(files: Sequence[Path]) -> set[str] | None:
    """The tensor names of safetensors files (or of the index among them); None when
    they cannot be read here (the weight loader reports that)."""
    names: set[str] = set()
    try:
        for path in files:
            if path.name.endswith(".index.json"):
                names.update(json.loads(path.read_text()).get("weight_map", {}))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    names.update(f.keys())
            else:
                return None
    except (OSError, ValueError):
        return None
    return names


def tie_missing_head(hf_config: Any, weight_files: Sequence[Path]) -> bool:
    """Ties the head of a config whose safetensors checkpoint has no LM head (see the module
    docstring); returns whether it did."""
    if getattr(hf_config, "tie_word_embeddings", False) or not weight_files:
        return False
    names = _tensor_names(weight_files)
    if names is None or any(h in names for h in HEAD_NAMES):
        return False
    hf_config.tie_word_embeddings = True
    return True
