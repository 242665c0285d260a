"""The bodies of vLLM's POST /tokenize and POST /detokenize.

/tokenize takes a `prompt` (with `add_special_tokens`) or a chat's `messages` (with
`add_generation_prompt`, `tools`); /detokenize takes `tokens`. Their rules are checked by
the handler (tokenize_handler.py) in the order the server's answers follow: the model
named, then what the body holds; so these models only check types (their `_check` is
empty) and offer the checks as methods.
"""

from __future__ import annotations

from typing import Annotated

from max.serve.api_errors import invalid
from max.serve.chat_request import ChatMessage
from max.serve.chat_tools import Tool
from max.serve.request_body import AsSent, RequestBody


def _flag(value: object, sent: bool, name: str) -> bool:
    """A boolean flag that is true when left out (sent as null: a 400, as any non-boolean)."""
    value = value if sent else True
    if not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be a boolean")
    return value


class TokenizeRequest(RequestBody):
    """A /tokenize body: a prompt, or a chat."""

    model: str | None = None
    prompt: str | None = None
    add_special_tokens: Annotated[bool | None, AsSent] = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: Annotated[bool | None, AsSent] = None
    tools: list[Tool] | None = None
    return_token_strs: Annotated[bool | None, AsSent] = None

    @property
    def is_chat(self) -> bool:
        """The body holds `messages` (even null): it is tokenized as a chat."""
        return self.sent("messages")

    def prompt_text(self, limit: int) -> str:
        """The prompt, at most `limit` characters."""
        if not isinstance(self.prompt, str):
            raise invalid("prompt", "'prompt' (a string) or 'messages' is required")
        if len(self.prompt) > limit:
            raise invalid("prompt", f"the prompt has {len(self.prompt)} characters, more than the limit of {limit}")
        return self.prompt

    def special_tokens(self) -> bool:
        """Whether the prompt's tokens get the tokenizer's special ones (BOS...)."""
        return _flag(self.add_special_tokens, self.sent("add_special_tokens"), "add_special_tokens")

    def generation_prompt(self) -> bool:
        """Whether the chat ends with the template's generation prompt."""
        return _flag(self.add_generation_prompt, self.sent("add_generation_prompt"), "add_generation_prompt")

    @property
    def wants_token_strs(self) -> bool:
        """The answer lists each token's text too (any truthy value asks for it)."""
        return bool(self.return_token_strs)


class DetokenizeRequest(RequestBody):
    """A /detokenize body: token ids."""

    model: str | None = None
    tokens: Annotated[list[int], AsSent]

    def token_ids(self, vocab_size: int) -> list[int]:
        """The ids, each in the vocabulary."""
        ids = self.tokens
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise invalid("tokens", "'tokens' must be a list of token ids")
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise invalid("tokens", f"token id {bad} is outside the vocabulary (size {vocab_size})")
        return ids
