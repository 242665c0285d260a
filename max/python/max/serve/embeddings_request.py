"""The body of OpenAI's POST /v1/embeddings, and the answer's models.

`input` is a string, a list of strings, a list of token ids, or a list of token-id lists
(OpenAI's four shapes); each string or token list is one embedding, in order. Empty input
(an empty string, list or token list) is a 400, as with OpenAI. `encoding_format` is
`float` (lists of numbers) or `base64` (each vector's little-endian float32 bytes, as
OpenAI's clients decode it); `dimensions` asks for a Matryoshka-truncated vector (checked
against the model by the handler); `user` is accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel

from max.serve.api_errors import invalid
from max.serve.json_kinds import integer
from max.serve.request_body import AsSent, RequestBody

# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048


def is_integer(value: object) -> bool:
    """A JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(is_integer(t) for t in value)


class EmbeddingRequest(RequestBody):
    """A /v1/embeddings body (see the module docstring)."""

    model: str | None = None
    input: Annotated[str | list[str] | list[int] | list[list[int]], AsSent]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int | None, AsSent] = None
    user: str | None = None

    def _check(self) -> None:
        value = self.input
        if isinstance(value, str):
            if not value:
                raise invalid("input", "'input' must not be an empty string")
        elif not value:
            raise invalid("input", "'input' must not be an empty list")
        elif len(value) > MAX_INPUTS:
            raise invalid(
                "input", f"'input' holds {len(value)} items, more than the limit of {MAX_INPUTS}"
            )
        elif all(isinstance(item, str) for item in value):
            empty = next((i for i, item in enumerate(value) if not item), None)
            if empty is not None:
                raise invalid(f"input[{empty}]", f"'input[{empty}]' must not be an empty string")
        elif not _is_token_list(value):
            if not all(isinstance(item, list) for item in value):
                raise invalid("input", "'input' must be a string, a list of strings, or token ids")
            bad = next((i for i, item in enumerate(value) if not _is_token_list(item)), None)
            if bad is not None:
                raise invalid(
                    f"input[{bad}]", f"'input[{bad}]' must be a non-empty list of token ids"
                )
        self.dimensions = integer(self.dimensions, "dimensions", None, 1)

    @property
    def texts(self) -> list[str] | None:
        """The inputs as strings (None: they are token ids)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        return list(value) if isinstance(value[0], str) else None

    @property
    def token_lists(self) -> list[list[int]]:
        """The inputs as token-id lists (when they are token ids)."""
        value = self.input
        return [list(value)] if is_integer(value[0]) else [list(item) for item in value]

    def prompt_chars(self) -> int:
        """Characters of the text inputs (what tokenizing them may cost)."""
        return sum(len(t) for t in self.texts or ())


class EmbeddingData(BaseModel):
    """One input's embedding: numbers, or their float32 bytes in base64."""

    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(BaseModel):
    """The tokens the inputs took."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """The answer of /v1/embeddings (OpenAI's `CreateEmbeddingResponse`)."""

    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage
