"""Limits on what one request may cost the server, checked before the expensive work.

- The body is read in chunks and refused (413) as soon as it passes `max_body_bytes`, so an
  oversized body is never held whole in memory.
- JSON nesting is measured on the raw bytes before parsing (400 beyond `max_json_depth`):
  Python's parser recurses per level and a body of 100,000 brackets would exhaust the stack.
- Prompt characters are counted before tokenization (400 beyond `max_prompt_chars`):
  tokenizing megabytes of text costs seconds of CPU for a request that would be refused
  for its token count anyway.

How many requests may be in the server at once, and for how long, is the job of
`http_guard` (429 with Retry-After, 408).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from max.serve.api_errors import ApiError

# A token is rarely more than a few characters: a prompt with over this many characters per
# token of the context length cannot fit, whatever the tokenizer makes of it.
PROMPT_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class ServerLimits:
    """The limits of `serve` (each one a flag; see server_args.py)."""

    max_body_bytes: int = 32 * 2**20
    max_json_depth: int = 64
    max_prompt_chars: int | None = None  # None: PROMPT_CHARS_PER_TOKEN x the context length
    max_queue_size: int = 1024  # generation requests in the server at once (then 429)
    request_timeout: float | None = None  # seconds from the first byte to the last (then 408)
    retry_after_seconds: int = 1  # what 429 and 503 answers tell clients to wait

    def prompt_chars(self, max_seq_len: int) -> int:
        """The effective prompt-character limit for a model of `max_seq_len` tokens."""
        if self.max_prompt_chars is not None:
            return self.max_prompt_chars
        return PROMPT_CHARS_PER_TOKEN * max_seq_len


def body_too_large(limit: int) -> ApiError:
    """The 413 answer naming the limit."""
    return ApiError(
        413,
        f"the request body is larger than {limit} bytes (the server's --max-request-body-bytes)",
        code="request_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# Per byte: +1 opens an array or object, -1 closes one; 0 for everything else.
_STEPS = np.zeros(256, dtype=np.int8)
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_CHUNK = 1 << 20


def json_depth(raw: bytes) -> int:
    """How deeply the JSON text `raw` nests arrays and objects (brackets inside strings do
    not count). Linear in the size and vectorized (a 32 MB body of brackets takes well
    under a second), with memory bounded by working in chunks.

    Text that is not valid JSON gets some number; the parser refuses it afterwards.
    """
    # Escaped backslashes first, then escaped quotes: each `"` left opens or closes a string.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = np.frombuffer(unescaped.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    depth = deepest = 0
    in_string = 0
    for start in range(0, len(structure), _CHUNK):
        part = structure[start : start + _CHUNK]
        quotes = (part == ord('"')).view(np.uint8)
        inside = np.bitwise_xor.accumulate(quotes) ^ in_string  # 1 within a string
        in_string = int(inside[-1])
        steps = np.where(inside == 0, _STEPS[part], 0).astype(np.int32)
        running = np.cumsum(steps) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


async def read_json(request: Request, limits: ServerLimits) -> Any:
    """The request body parsed as JSON, within the body-size and nesting limits."""
    raw = await read_body(request, limits.max_body_bytes)
    depth = json_depth(raw)
    if depth > limits.max_json_depth:
        raise ApiError(
            400,
            f"the request body nests JSON {depth} levels deep, more than the limit of "
            f"{limits.max_json_depth} (the server's --max-json-depth)",
            code="json_too_deep",
        )
    try:
        return json.loads(raw)
    except RecursionError:  # a limit set above what the parser's stack allows
        raise ApiError(400, "the request body nests JSON too deeply to parse", code="json_too_deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


def check_prompt_chars(chars: int, param: str, limit: int) -> None:
    """Refuses (400) a prompt whose text is longer than `limit` characters (`chars`: its
    length, `param`: the field that holds it)."""
    if chars > limit:
        raise ApiError(
            400,
            f"the prompt has {chars} characters, more than the limit of {limit} "
            "(the server's --max-prompt-chars)",
            param=param,
            code="prompt_too_long",
        )
