"""Rendering the answers of the generation endpoints: OpenAI's JSON bodies and the
server-sent events of a stream.

The handlers decide what to say; this module decides how it is written: completion objects
and stream chunks, assistant messages and their deltas (reasoning, tool calls), logprobs in
chat's and in legacy completions' shapes, usage, and the `data: ...` framing of events.
"""

from __future__ import annotations

import json
import time
from typing import Any

from max.pipelines.lib import TextDelta, TextTokenizer, TokenLogprob
from max.pipelines.lib.tokens.harmony import HarmonyParser
from max.pipelines.lib.tokens.reasoning import ReasoningParser
from max.pipelines.lib.tokens.tool_call_stream import ToolCallFragment
from max.pipelines.lib.tokens.tool_calls import ToolCall, ToolCallParser

CHAT_COMPLETION = "chat.completion"
CHAT_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"  # a completion and each event of a streamed one
STREAM_END = "data: [DONE]\n\n"


# -- whole answers and chunks ---------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """The `usage` object; `cached_tokens`: prompt tokens the prefix cache held."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion(rid: str, kind: str, model: str, choices: list[dict], use: dict) -> dict[str, Any]:
    """A non-streamed answer: `kind` is chat.completion or text_completion."""
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, "usage": use}


def chunk(rid: str, kind: str, model: str, choices: list[dict], use: dict | None = None) -> dict[str, Any]:
    """One streamed chunk: `kind` is chat.completion.chunk or text_completion."""
    body = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def token_id_fields(token_ids: list[int], prompt_ids: list[int] | None = None) -> dict[str, list[int]]:
    """A choice's (or a chunk's) `token_ids`, after its `prompt_token_ids` when given."""
    fields = {} if prompt_ids is None else {"prompt_token_ids": list(prompt_ids)}
    fields["token_ids"] = list(token_ids)
    return fields


# -- server-sent events ---------------------------------------------------------------------
# Characters that str.splitlines() (and line readers built on it, like httpx's) take for
# line ends, which JSON leaves raw: escaped, so that no event is cut in two.
_LINE_BREAKS_JSON_KEEPS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse(payload: dict[str, Any]) -> str:
    """One event of a stream: `data: <payload as one line of JSON>` and a blank line."""
    text = json.dumps(payload, ensure_ascii=False).translate(_LINE_BREAKS_JSON_KEEPS)
    return f"data: {text}\n\n"


# -- chat messages --------------------------------------------------------------------------
def tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A tool call as OpenAI writes it (`index`: its place in a streamed message)."""
    body = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return body if index is None else {"index": index, **body}


def call_fragment(fragment: ToolCallFragment) -> dict[str, Any]:
    """A streamed piece of a tool call: its header (id, name) and/or argument text."""
    function = {"arguments": fragment.arguments} if fragment.name is None else {"name": fragment.name, "arguments": fragment.arguments}
    body: dict[str, Any] = {"index": fragment.index}
    if fragment.id is not None:
        body.update(id=fragment.id, type="function")
    body["function"] = function
    return body


def assistant_message(
    text: str, reasoning: HarmonyParser | ReasoningParser | None, tools: ToolCallParser | None
) -> dict[str, Any]:
    """A chat choice's message; the reasoning (a harmony model's analysis channel, or the
    `<think>` block --reasoning-parser splits off) goes to `reasoning_content`, tool calls
    to `tool_calls` (the content is then what is left, or null)."""
    if reasoning is None:
        message = {"role": "assistant", "content": text}
    else:
        message = {"role": "assistant", "content": reasoning.content, "reasoning_content": reasoning.reasoning or None}
    if tools is not None:
        message["content"] = tools.content.strip() or None
        if tools.calls:
            message["tool_calls"] = [tool_call(call) for call in tools.calls]
    return message


def assistant_delta(delta: TextDelta, finish: str | None, first_call_index: int) -> dict[str, Any]:
    """A streamed chat chunk's `delta`: new reasoning, content and/or tool calls (numbered
    from `first_call_index`); an empty content unless the chunk only finishes the choice or
    carries calls."""
    body: dict[str, Any] = {}
    if delta.reasoning_text:
        body["reasoning_content"] = delta.reasoning_text
    if delta.tool_calls:
        body["tool_calls"] = [
            call_fragment(call) if isinstance(call, ToolCallFragment) else tool_call(call, first_call_index + i)
            for i, call in enumerate(delta.tool_calls)
        ]
    if delta.text or not (finish or body):
        body["content"] = delta.text
    return body


# -- logprobs -------------------------------------------------------------------------------
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


def prompt_logprobs(
    tokenizer: TextTokenizer | None, entries: list[TokenLogprob | None], alternatives: int
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: per prompt token, None (the first) or {"token id": {logprob,
    rank, decoded_token}} for the token itself and its `alternatives` most likely ones (rank:
    1 for the most likely; null for the token itself when it is not among them)."""
    out: list[dict[str, dict[str, Any]] | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        top = entry.top[:alternatives]
        ranks = {token_id: r + 1 for r, (token_id, _) in enumerate(top)}
        position = {str(entry.token_id): (entry.logprob, ranks.get(entry.token_id), entry.token_id)}
        for token_id, logprob in top:
            position.setdefault(str(token_id), (logprob, ranks[token_id], token_id))
        out.append({key: {"logprob": lp, "rank": rank, "decoded_token": token_text(tokenizer, tid)}
                    for key, (lp, rank, tid) in position.items()})  # fmt: skip
    return out


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
