"""Writing the answers of /v1/responses: the response object, its output items, its usage,
and the server-sent events of a stream in OpenAI's order.

A response's `output` is a list of items: a `reasoning` item (the model's thinking, when
the server splits it off), a `message` item holding one `output_text` part, and one
`function_call` item per tool call. A stream announces each item as it begins and ends:

    response.created, response.in_progress,
    (reasoning)  response.output_item.added, response.reasoning_text.delta...,
                 response.reasoning_text.done, response.output_item.done
    (message)    response.output_item.added, response.content_part.added,
                 response.output_text.delta..., response.output_text.done,
                 response.content_part.done, response.output_item.done
    (call)       response.output_item.added, response.function_call_arguments.delta,
                 response.function_call_arguments.done, response.output_item.done
    response.completed (also when max_output_tokens cut the answer: its status says incomplete)

Every event carries its `sequence_number`; item ids stay the same from added to completed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from max.pipelines.lib import TextDelta
from max.pipelines.lib.tokens.tool_calls import ToolCall
from max.serve import response_rendering as render


def item_id(prefix: str) -> str:
    """A new item id: msg_..., rs_..., fc_..."""
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(rid: str, text: str) -> dict[str, Any]:
    """A reasoning item (its text as one reasoning_text part)."""
    return {"type": "reasoning", "id": rid, "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": "completed"}  # fmt: skip


def text_part(text: str) -> dict[str, Any]:
    """An output_text part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(mid: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message item with one output_text part."""
    return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": [text_part(text)]}


def call_item(call: ToolCall, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    """A function_call item (`call_id`: the id the client answers with its output)."""
    return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
            "name": call.name, "arguments": call.arguments if arguments is None else arguments, "status": status}  # fmt: skip


def usage(prompt_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The Responses API's usage object."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + output_tokens,
    }


def response_object(
    rid: str, request: dict[str, Any], status: str, output: list[dict[str, Any]], use: dict[str, Any] | None,
    incomplete_reason: str | None = None, created_at: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The response object; `request` holds the settings it echoes (model, instructions,
    tools, tool_choice, text, store, ...)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        **request,
        "output": output,
        "usage": use,
    }


class EventWriter:
    """Turns one choice's deltas into the stream's item events (see the module docstring),
    and keeps the output items they make for the final response."""

    def __init__(self) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the reasoning or message item being written
        self._text = ""
        self._held_space = ""  # whitespace before any text: not worth a message of its own yet

    def event(self, kind: str, **fields: Any) -> str:
        """One event: `event: KIND` and its data, numbered."""
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\n" + render.sse(payload)

    def write(self, delta: TextDelta) -> list[str]:
        """The events of one delta."""
        events = []
        if delta.reasoning_text:
            events += self._ensure("reasoning")
            events.append(self._text_delta("response.reasoning_text.delta", delta.reasoning_text))
        text = delta.text
        if text and (self._open is None or self._open["type"] != "message") and not text.strip():
            self._held_space += text
        elif text:
            events += self._ensure("message")
            events.append(self._text_delta("response.output_text.delta", self._held_space + text))
            self._held_space = ""
        for call in delta.tool_calls:
            events += self._close()
            events += self._call(call)
        return events

    def close(self) -> list[str]:
        """Closes the item being written."""
        return self._close()

    # -- items -----------------------------------------------------------------------------
    def _ensure(self, kind: str) -> list[str]:
        if self._open is not None and self._open["type"] == kind:
            return []
        events = self._close()
        index = len(self.output)
        if kind == "reasoning":
            self._open = {**reasoning_item(item_id("rs"), ""), "status": "in_progress"}
            events.append(self.event("response.output_item.added", output_index=index, item={**self._open, "content": []}))
        else:
            self._open = message_item(item_id("msg"), "", status="in_progress")
            events.append(self.event("response.output_item.added", output_index=index, item={**self._open, "content": []}))
            events.append(self._part_event("response.content_part.added", text_part("")))
        self._text = ""
        return events

    def _text_delta(self, kind: str, text: str) -> str:
        self._text += text
        return self.event(kind, item_id=self._open["id"], output_index=len(self.output), content_index=0, delta=text,
                          **({"logprobs": []} if kind == "response.output_text.delta" else {}))  # fmt: skip

    def _part_event(self, kind: str, part: dict[str, Any]) -> str:
        return self.event(kind, item_id=self._open["id"], output_index=len(self.output), content_index=0, part=part)

    def _close(self) -> list[str]:
        item = self._open
        if item is None:
            return []
        index, text, events = len(self.output), self._text, []
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], text)
            events.append(self.event("response.reasoning_text.done", **common, text=text))
        else:
            done = message_item(item["id"], text)
            events.append(self.event("response.output_text.done", **common, text=text, logprobs=[]))
            events.append(self.event("response.content_part.done", **common, part=text_part(text)))
        events.append(self.event("response.output_item.done", output_index=index, item=done))
        self.output.append(done)
        self._open = None
        return events

    def _call(self, call: ToolCall) -> list[str]:
        index = len(self.output)
        added = call_item(call, status="in_progress", arguments="")
        done = call_item(call)
        common = {"item_id": done["id"], "output_index": index}
        self.output.append(done)
        return [
            self.event("response.output_item.added", output_index=index, item=added),
            self.event("response.function_call_arguments.delta", **common, delta=call.arguments),
            self.event("response.function_call_arguments.done", **common, name=call.name, arguments=call.arguments),
            self.event("response.output_item.done", output_index=index, item=done),
        ]
