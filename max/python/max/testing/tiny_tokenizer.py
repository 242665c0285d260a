"""The tokenizer the tiny checkpoints carry: SmolLM2's (vocabulary 49152), taken from the
embedded SmolLM2 GGUF so that no download is needed.

Both the text checkpoints (`max.testing.tiny_checkpoints`) and the vision-language
processor files (`max.testing.tiny_vl_processor`, which adds its image tokens after this
vocabulary) start from it.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_VOCAB = 49152


def tokenizer_dir() -> Path:
    """A folder with the SmolLM2 tokenizer (vocab 49152), converted from its GGUF once."""
    from max.pipelines.lib.hub.embedded_models import DEFAULT_MODEL
    from max.pipelines.lib.tokens.tokenizer import _gguf_tokenizer_dir

    return _gguf_tokenizer_dir(DEFAULT_MODEL.path())
