"""Building OpenAI response bodies: completion objects, stream chunks, logprobs, usage."""

from __future__ import annotations

import time
from typing import Any

from max.pipelines.lib import TextTokenizer, TokenLogprob


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_text(tokenizer: TextTokenizer | None, token_id: int) -> str:
    """A token's text; without a tokenizer, `token_id:N` (as vLLM writes ids as tokens)."""
    return tokenizer.token_text(token_id) if tokenizer is not None else f"token_id:{token_id}"


def chat_logprobs(tokenizer: TextTokenizer | None, entries: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
            for e in entries
        ]
    }


def completion_logprobs(
    tokenizer: TextTokenizer | None,
    entries: list[TokenLogprob | None],
    token_ids: list[int],
    text_offset_start: int = 0,
) -> dict[str, Any]:
    """Legacy completions' `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset).

    `entries[i]` is None where no log-probability exists (the first prompt token).
    """
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset_start
    for token_id, entry in zip(token_ids, entries):
        text = token_text(tokenizer, token_id)
        tokens.append(text)
        offsets.append(offset)
        if tokenizer is not None:  # without one, the text is empty: every offset is 0
            offset += len(text)
        if entry is None:
            token_logprobs.append(None)
            tops.append(None)
        else:
            token_logprobs.append(entry.logprob)
            tops.append({token_text(tokenizer, t): lp for t, lp in entry.top} if entry.top else None)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_completion(rid: str, model: str, choices: list[dict], use: dict) -> dict[str, Any]:
    """A non-streamed chat.completion."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model, "choices": choices, "usage": use}


def text_completion(rid: str, model: str, choices: list[dict], use: dict) -> dict[str, Any]:
    """A non-streamed text_completion."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices, "usage": use}


def chunk(rid: str, model: str, chat: bool, choices: list[dict], use: dict | None = None) -> dict[str, Any]:
    """One streamed chunk."""
    body = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if use is not None:
        body["usage"] = use
    return body
