"""Text tokenization: Hugging Face tokenizers, chat templates, end-of-sequence ids.

Tokenizers come from the model folder (tokenizer.json and friends) or are built from a GGUF
file's metadata. Building one from GGUF takes transformers several seconds (tens for a 262k
vocabulary), so the result is saved under the cache directory, keyed by a hash of the
file's metadata, and later loads read that copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from max.errors import MaxError
from max.pipelines.lib.hub.embedded_models import cache_dir, file_digest
from max.pipelines.lib.hub.hf_config import eos_token_ids
from max.pipelines.lib.hub.model_source import ModelSource
from max.pipelines.lib.weights import GGUFFile


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _gguf_tokenizer_dir(gguf_path: Path) -> Path:
    """A folder with the tokenizer of a GGUF file, converted once and then reused."""
    metadata_bytes = GGUFFile(gguf_path).metadata_nbytes
    key = file_digest(gguf_path, limit=metadata_bytes)
    target = cache_dir() / "tokenizers" / key
    if (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tmp = target.with_name(f"{key}.tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_hf_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The Hugging Face tokenizer of a model (its folder's files, or its GGUF metadata)."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    if source.gguf_file is not None:
        directory = _gguf_tokenizer_dir(source.gguf_file)
    else:
        directory = source.directory
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code, local_files_only=True)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise MaxError(
                f"the tokenizer in {directory} needs code from the model repository: pass "
                "--trust-remote-code if you trust that code"
            ) from None
        raise MaxError(f"cannot load the tokenizer from {directory}: {e}") from None
    except OSError as e:
        raise MaxError(f"cannot load the tokenizer from {directory}: {e}") from None


class TextTokenizer:
    """Encodes prompts, applies chat templates, decodes tokens; knows the model's EOS ids."""

    def __init__(self, hf_tokenizer: Any, eos_ids: set[int]) -> None:
        self.hf = hf_tokenizer
        self.eos_token_ids = set(eos_ids)
        if hf_tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(int(hf_tokenizer.eos_token_id))

    @classmethod
    def from_source(
        cls, source: ModelSource, hf_config: Any = None, trust_remote_code: bool = False
    ) -> TextTokenizer:
        """The tokenizer of a model (its folder's files, or its GGUF metadata)."""
        hf = load_hf_tokenizer(source, trust_remote_code)
        eos = eos_token_ids(hf_config) if hf_config is not None else set()
        return cls(hf, eos)

    @property
    def takes_images(self) -> bool:
        """Whether chat messages may hold images (a vision-language model's tokenizer)."""
        return False

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer knows (added tokens included)."""
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template."""
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with BOS etc. when the tokenizer adds them)."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token on its own (for logprob listings)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages`; `template_kwargs` are
        variables of the template (e.g. gpt-oss's `reasoning_effort`)."""
        if not self.has_chat_template:
            raise MaxError("this model has no chat template: use the completions API instead")
        try:
            return self.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **(template_kwargs or {})
            )
        except Exception as e:  # jinja2 raises TemplateError subclasses, and templates raise too
            raise MaxError(f"the chat template rejected the messages: {e}") from None

    def encode_chat(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """Token ids of the chat prompt; the template already holds any special tokens."""
        return self.encode(self.render_chat(messages, template_kwargs=template_kwargs), add_special_tokens=False)
