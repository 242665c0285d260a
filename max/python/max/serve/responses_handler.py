"""POST /v1/responses (OpenAI's Responses API), and GET and DELETE /v1/responses/{id}.

A request is served as the chat completion it maps to (responses_request.py): prompts,
tools, images, structured outputs and reasoning behave as on /v1/chat/completions. The
answer is a response object (responses_rendering.py) whose output items are the reasoning,
the message and the function calls; a stream is OpenAI's event sequence.

Responses are kept (unless `store: false`) in a bounded in-memory store, oldest dropped
first, so that `previous_response_id` can continue a conversation and GET and DELETE can
read and remove them; a response the server no longer holds is a 404.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from max.pipelines.lib import TextDelta
from max.serve import responses_rendering as out
from max.serve.api_errors import ApiError
from max.serve.chat_handler import AssistantChoice, ChatCompletionHandler
from max.serve.generation_choice import Choice
from max.serve.generation_handler import generation_error
from max.serve.responses_request import ResponsesChatRequest, ResponsesRequest, output_as_message
from max.serve.server_state import ServerState

# Responses the server keeps for previous_response_id, GET and DELETE (the oldest go first),
# and the most memory their JSON may take together.
MAX_STORED_RESPONSES = 1024
MAX_STORED_BYTES = 256 * 2**20


@dataclass
class StoredResponse:
    """A response as GET returns it, and the conversation it ends (chat messages)."""

    body: dict[str, Any]
    conversation: list[dict[str, Any]]

    @property
    def size(self) -> int:
        """Bytes of its JSON (what the store counts against its memory bound)."""
        return len(json.dumps([self.body, self.conversation], ensure_ascii=False))


class ResponseStore:
    """The last `capacity` stored responses, by id, at most `max_bytes` of them together
    (an image in a data URL is part of its conversation)."""

    def __init__(self, capacity: int = MAX_STORED_RESPONSES, max_bytes: int = MAX_STORED_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0

    def put(self, rid: str, stored: StoredResponse) -> None:
        """Keeps `stored`, dropping the oldest responses beyond the bounds (one larger
        than the whole memory bound is not kept)."""
        self.delete(rid)
        size = stored.size
        self._items[rid] = (stored, size)
        self._bytes += size
        while self._items and (len(self._items) > self.capacity or self._bytes > self.max_bytes):
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def get(self, rid: str) -> StoredResponse | None:
        """The stored response, or None."""
        entry = self._items.get(rid)
        return entry[0] if entry is not None else None

    def delete(self, rid: str) -> bool:
        """Removes the response; False if the server did not hold it."""
        entry = self._items.pop(rid, None)
        if entry is None:
            return False
        self._bytes -= entry[1]
        return True


class ResponsesHandler(ChatCompletionHandler):
    """Serves /v1/responses (see the module docstring)."""

    request_model = ResponsesChatRequest
    id_prefix = "resp"

    def __init__(self, state: ServerState, store: ResponseStore | None = None) -> None:
        super().__init__(state)
        self.store = store if store is not None else ResponseStore()

    def _parse(self, body: Any) -> ResponsesChatRequest:
        source = ResponsesRequest.from_json(body)
        earlier: list[dict[str, Any]] = []
        if source.previous_response_id is not None:
            stored = self.store.get(source.previous_response_id)
            if stored is None:
                raise _not_found(source.previous_response_id, "previous_response_id")
            earlier = stored.conversation
        return ResponsesChatRequest.of(source, earlier)

    # -- the whole answer ------------------------------------------------------------------
    def _answer(self, gen: ResponsesChatRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]]) -> dict[str, Any]:  # fmt: skip
        choice = choices[0]
        assert isinstance(choice, AssistantChoice)
        output = []
        split = choice.harmony or choice.reasoning
        if split is not None and split.reasoning:
            output.append(out.reasoning_item(out.item_id("rs"), split.reasoning))
        if choice.tools is not None:
            text = choice.tools.content.strip()
        else:
            text = split.content if split is not None else choice.stream.text
        calls = choice.tools.calls if choice.tools is not None else []
        if text or not calls:
            output.append(out.message_item(out.item_id("msg"), text))
        output += [out.call_item(call) for call in calls]
        return self._finished(gen, choice, _response_id(base_id), output, len(prompt_ids[0]), int(time.time()))

    def _finished(self, gen: ResponsesChatRequest, choice: Choice, rid: str, output: list[dict[str, Any]],
                  prompt_tokens: int, created: int) -> dict[str, Any]:  # fmt: skip
        """The finished response (stored unless `store: false`)."""
        use = out.usage(prompt_tokens, len(choice.stream.token_ids), min(choice.stream.num_cached_tokens, prompt_tokens))
        cut = choice.finish_reason == "length"
        body = out.response_object(rid, _echo(gen), "incomplete" if cut else "completed", output, use,
                                   "max_output_tokens" if cut else None, created)  # fmt: skip
        if gen.source.store is not False:
            text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
            # A call cut short (status incomplete) is no call of the conversation.
            calls = [item for item in output if item["type"] == "function_call" and item["status"] == "completed"]
            self.store.put(rid, StoredResponse(body, [*gen.history, output_as_message(text, calls)]))
        return body

    # -- the stream ------------------------------------------------------------------------
    async def _events(
        self, gen: ResponsesChatRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]],
        deltas: AsyncIterator[tuple[Choice, TextDelta | None]],
    ) -> AsyncIterator[str]:  # fmt: skip
        choice = choices[0]
        rid, created = _response_id(base_id), int(time.time())
        writer = out.EventWriter()
        opening = out.response_object(rid, _echo(gen), "in_progress", [], None, created_at=created)
        yield writer.event("response.created", response=opening)
        yield writer.event("response.in_progress", response=opening)
        async for _, delta in deltas:
            if delta is None:  # the engine refused or failed the request
                error = generation_error(choice.error or "generation failed", choice.server_error)
                failed = {**opening, "status": "failed", "error": {"code": "server_error" if choice.server_error
                          else "invalid_request", "message": error.message}}  # fmt: skip
                yield writer.event("response.failed", response=failed)
                return
            for event in writer.write(delta):
                yield event
        for event in writer.close():
            yield event
        body = self._finished(gen, choice, rid, writer.output, len(prompt_ids[0]), created)
        # An answer cut by max_output_tokens ends with response.completed too (its status
        # says incomplete): the openai client's stream helper only finishes on that event.
        yield writer.event("response.completed", response=body)

    # -- stored responses ------------------------------------------------------------------
    async def get(self, request: Request) -> Response:
        """GET /v1/responses/{id}: a stored response."""
        rid = request.path_params["response_id"]
        stored = self.store.get(rid)
        if stored is None:
            raise _not_found(rid, "response_id")
        return JSONResponse(stored.body)

    async def delete(self, request: Request) -> Response:
        """DELETE /v1/responses/{id}: forgets a stored response."""
        rid = request.path_params["response_id"]
        if not self.store.delete(rid):
            raise _not_found(rid, "response_id")
        return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})


def _response_id(base_id: str) -> str:
    return base_id.replace("-", "_", 1)


def _not_found(rid: str, param: str) -> ApiError:
    return ApiError(404, f"no response with id {rid!r} is stored on this server", param=param, code="response_not_found")


def _echo(gen: ResponsesChatRequest) -> dict[str, Any]:
    """The request's settings a response object repeats."""
    source = gen.source
    fmt = source.text.format.as_sent() if source.text is not None and source.text.format is not None else {"type": "text"}
    tools = [{**tool.as_sent(), "type": "function"} for tool in source.tools or []]
    choice = source.tool_choice
    return {
        "model": source.model,
        "instructions": source.instructions,
        "max_output_tokens": source.max_output_tokens,
        "parallel_tool_calls": gen.parallel_tool_calls,
        "previous_response_id": source.previous_response_id,
        "reasoning": {"effort": source.reasoning.effort if source.reasoning else None, "summary": None},
        "store": source.store is not False,
        "temperature": gen.temperature,
        "text": {"format": fmt},
        "tool_choice": choice.as_sent() if hasattr(choice, "as_sent") else (choice or gen.tool_choice),
        "tools": tools,
        "top_p": gen.top_p,
        "truncation": "disabled",
        "metadata": source.metadata or {},
    }
