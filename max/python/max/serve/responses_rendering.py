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
    (call)       response.output_item.added, response.function_call_arguments.delta...,
                 response.function_call_arguments.done, response.output_item.done
    response.completed (also when max_output_tokens cut the answer: its status says incomplete)

Every event carries its `sequence_number`; item ids stay the same from added to completed.
A function_call item is added as soon as the call's name is written, and its arguments
follow in fragments while the model writes them (answer_blocks.py); a
call the answer's end cut short is done with status `incomplete`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from max.pipelines.lib.tokens.tool_call_stream import ToolCallFragment
from max.pipelines.lib.tokens.tool_calls import ToolCall
from max.serve import response_rendering as render
from max.serve.answer_blocks import BlockKind, BlockStream


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


class EventWriter(BlockStream):
    """Turns one choice's deltas into the stream's item events (the order: answer_blocks.py),
    and keeps the output items they make for the final response."""

    def __init__(self) -> None:
        super().__init__()
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._item: dict[str, Any] = {}  # the open item, as added

    def event(self, kind: str, **fields: Any) -> str:
        """One event: `event: KIND` and its data, numbered."""
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\n" + render.sse(payload)

    def start_block(self, kind: BlockKind, call: ToolCallFragment | None) -> list[str]:
        index = len(self.output)
        if kind == "call":  # added with its name; its arguments follow in deltas
            self._item = call_item(ToolCall(call.name, "", call.id or ""), status="in_progress")
            return [self.event("response.output_item.added", output_index=index, item=self._item)]
        if kind == "reasoning":
            self._item = {**reasoning_item(item_id("rs"), ""), "status": "in_progress"}
        else:
            self._item = message_item(item_id("msg"), "", status="in_progress")
        events = [self.event("response.output_item.added", output_index=index, item={**self._item, "content": []})]
        if kind == "text":
            events.append(self.event("response.content_part.added", **self._common(), part=text_part("")))
        return events

    def block_delta(self, text: str) -> list[str]:
        if self.kind == "call":
            return [self.event("response.function_call_arguments.delta", item_id=self._item["id"],
                               output_index=len(self.output), delta=text)]  # fmt: skip
        if self.kind == "reasoning":
            return [self.event("response.reasoning_text.delta", **self._common(), delta=text)]
        return [self.event("response.output_text.delta", **self._common(), delta=text, logprobs=[])]

    def end_block(self) -> list[str]:
        item, index, text = self._item, len(self.output), self.text
        if self.kind == "call":  # one the answer's end cut short is incomplete
            done = {**item, "arguments": text, "status": "completed" if _is_object(text) else "incomplete"}
            events = [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                 name=item["name"], arguments=text)]  # fmt: skip
        elif self.kind == "reasoning":
            done = reasoning_item(item["id"], text)
            events = [self.event("response.reasoning_text.done", **self._common(), text=text)]
        else:
            done = message_item(item["id"], text)
            events = [self.event("response.output_text.done", **self._common(), text=text, logprobs=[]),
                      self.event("response.content_part.done", **self._common(), part=text_part(text))]  # fmt: skip
        events.append(self.event("response.output_item.done", output_index=index, item=done))
        self.output.append(done)
        return events

    def _common(self) -> dict[str, Any]:
        """The fields that place an event in the open item's one content part."""
        return {"item_id": self._item["id"], "output_index": len(self.output), "content_index": 0}


def _is_object(text: str) -> bool:
    """Whether `text` is a whole JSON object (a call's arguments the model finished)."""
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
