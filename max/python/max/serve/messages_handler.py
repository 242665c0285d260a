"""POST /v1/messages (Anthropic's Messages API) and POST /v1/messages/count_tokens.

A request is served as the chat completion it maps to (messages_request.py), so prompts,
tools, images, reasoning and sampling behave exactly as on /v1/chat/completions; what
differs is the answer: a `message` whose content is blocks (`thinking` from the reasoning,
`text`, one `tool_use` per call, its input an object), a `stop_reason` (end_turn,
max_tokens, stop_sequence with the `stop_sequence` that matched, tool_use) and usage in
Anthropic's terms (input tokens the prefix cache held are `cache_read_input_tokens`). A
stream is Anthropic's events: message_start, then per block content_block_start,
content_block_delta... and content_block_stop, then message_delta (the stop reason and
the output tokens) and message_stop; a `tool_use` block opens as soon as the call's name is
written and its input follows as `input_json_delta` fragments while the model writes it
(answer_blocks.py), so the fragments' concatenation is the input's JSON. Errors use
Anthropic's body (`{"type": "error", "error": {"type", "message"}}`, api_errors.for_path).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from max.pipelines.lib import RequestTextStream, TextDelta
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.tokens.tool_call_stream import ToolCallFragment
from max.pipelines.lib.tokens.tool_calls import ToolCall
from max.serve import response_rendering as render
from max.serve.answer_blocks import BlockKind, BlockStream
from max.serve.api_errors import AnthropicError
from max.serve.chat_handler import AssistantChoice, ChatCompletionHandler
from max.serve.chat_request import ChatCompletionRequest
from max.serve.generation_choice import Choice
from max.serve.generation_handler import generation_error
from max.serve.messages_request import CountTokensRequest, MessagesChatRequest
from max.serve.request_limits import read_json


@dataclass
class MessageChoice(AssistantChoice):
    """The assistant message of a /v1/messages request, and the stop sequence that ended it."""

    stop_sequence: str | None = None

    @property
    def stop_reason(self) -> str | None:
        """Anthropic's name of why the message ended."""
        reason = self.finish_reason
        if reason == "tool_calls":
            return "tool_use"
        if reason == "stop":
            return "stop_sequence" if self.stop_sequence is not None else "end_turn"
        if reason == "length":
            return "max_tokens"
        return reason


class MessagesHandler(ChatCompletionHandler):
    """Serves /v1/messages and /v1/messages/count_tokens (see the module docstring)."""

    request_model = MessagesChatRequest
    id_prefix = "msg"

    # -- the choice ------------------------------------------------------------------------
    def _new_choice(self, gen: ChatCompletionRequest, index: int, request_id: str, prompt_index: int,
                    ids: list[int], stream: RequestTextStream, images: tuple[ImageInput, ...]) -> MessageChoice:  # fmt: skip
        choice = super()._new_choice(gen, index, request_id, prompt_index, ids, stream, images)
        return MessageChoice(**{f.name: getattr(choice, f.name) for f in dataclasses.fields(choice)})

    def _shape_delta(self, choice: MessageChoice, delta: TextDelta) -> TextDelta:
        if delta.stopped_by_string:
            choice.stop_sequence = self._matched_stop(choice)
        return super()._shape_delta(choice, delta)

    def _matched_stop(self, choice: Choice) -> str:
        """The stop string that ended the text: the one that begins where the text ends."""
        stops = choice.stream.params.stop
        full = self.state.tokenizer.decode(choice.stream.token_ids) if self.state.tokenizer else ""
        tail = full[len(choice.stream.text) :] if full.startswith(choice.stream.text) else full
        found = [(tail.find(s), i) for i, s in enumerate(stops) if s in tail]
        return stops[min(found)[1]] if found else stops[0]

    # -- the whole answer ------------------------------------------------------------------
    def _answer(self, gen: MessagesChatRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]]) -> dict[str, Any]:  # fmt: skip
        choice = choices[0]
        assert isinstance(choice, MessageChoice)
        blocks: list[dict[str, Any]] = []
        split = choice.harmony or choice.reasoning
        if split is not None and split.reasoning:
            blocks.append({"type": "thinking", "thinking": split.reasoning, "signature": ""})
        if choice.tools is not None:
            text = choice.tools.content.strip()
        else:
            text = split.content if split is not None else choice.stream.text
        if text or not (blocks or (choice.tools and choice.tools.calls)):
            blocks.append({"type": "text", "text": text})
        for call in choice.tools.calls if choice.tools is not None else []:
            blocks.append(_tool_use(call))
        return {
            "id": _message_id(base_id),
            "type": "message",
            "role": "assistant",
            "model": gen.model,
            "content": blocks,
            "stop_reason": choice.stop_reason,
            "stop_sequence": choice.stop_sequence,
            "usage": _usage(choice, len(prompt_ids[0])),
        }

    # -- the stream ------------------------------------------------------------------------
    async def _events(
        self, gen: MessagesChatRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]],
        deltas: AsyncIterator[tuple[Choice, TextDelta | None]],
    ) -> AsyncIterator[str]:  # fmt: skip
        choice = choices[0]
        assert isinstance(choice, MessageChoice)
        start_usage = {**_usage(choice, len(prompt_ids[0])), "output_tokens": 0}
        message = {"id": _message_id(base_id), "type": "message", "role": "assistant", "model": gen.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}  # fmt: skip
        yield _event("message_start", {"message": message})
        blocks = _BlockWriter()
        async for _, delta in deltas:
            if delta is None:  # the engine refused or failed the request
                error = generation_error(choice.error or "generation failed", choice.server_error)
                yield _event("error", AnthropicError(error.status, error.message).body())
                return
            for event in blocks.write(delta):
                yield event
        for event in blocks.close():
            yield event
        usage = _usage(choice, len(prompt_ids[0]))
        yield _event("message_delta", {"delta": {"stop_reason": choice.stop_reason, "stop_sequence": choice.stop_sequence},
                                       "usage": {"output_tokens": usage["output_tokens"]}})  # fmt: skip
        yield _event("message_stop", {})

    # -- count_tokens ----------------------------------------------------------------------
    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens: the prompt's tokens, as a message would take them."""
        body = CountTokensRequest.from_json(await read_json(request, self.state.limits))
        gen = ChatCompletionRequest.from_json({**body.chat_body(), "max_tokens": 1})
        self._check_served(gen)
        prompts = await self._encoded_prompts(gen)
        return JSONResponse({"input_tokens": len(prompts.ids[0])})


class _BlockWriter(BlockStream):
    """A message's content-block events, in Anthropic's shapes (the order: answer_blocks.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = -1

    def close(self) -> list[str]:
        """Ends the open block (a message with no block gets an empty text block)."""
        return (self._open("text") if self.index < 0 else []) + super().close()

    def start_block(self, kind: BlockKind, call: ToolCallFragment | None) -> list[str]:
        self.index += 1
        if kind == "reasoning":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "text":
            block = {"type": "text", "text": ""}
        else:  # a tool_use block opens with its input empty; input_json_delta fragments follow
            block = {"type": "tool_use", "id": _tool_use_id(call.id), "name": call.name, "input": {}}
        return [_event("content_block_start", {"index": self.index, "content_block": block})]

    def block_delta(self, text: str) -> list[str]:
        delta = {"reasoning": {"type": "thinking_delta", "thinking": text}, "text": {"type": "text_delta", "text": text},
                 "call": {"type": "input_json_delta", "partial_json": text}}[self.kind]  # fmt: skip
        return [_event("content_block_delta", {"index": self.index, "delta": delta})]

    def end_block(self) -> list[str]:
        return [_event("content_block_stop", {"index": self.index})]


def _event(kind: str, payload: dict[str, Any]) -> str:
    """One server-sent event of Anthropic's stream: its name, and its data (with `type`)."""
    return f"event: {kind}\n" + render.sse({"type": kind, **payload})


def _message_id(base_id: str) -> str:
    return base_id.replace("-", "_", 1)


def _tool_use(call: ToolCall) -> dict[str, Any]:
    """A tool call as a tool_use block (its arguments as the input object)."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": _tool_use_id(call.id), "name": call.name,
            "input": arguments if isinstance(arguments, dict) else {}}  # fmt: skip


def _tool_use_id(call_id: str | None) -> str:
    """A call's id as Anthropic spells it (`toolu_...`)."""
    return (call_id or "").replace("call_", "toolu_", 1)


def _usage(choice: Choice, prompt_tokens: int) -> dict[str, int]:
    """Anthropic's usage: prompt tokens the prefix cache held are read from the cache."""
    cached = min(choice.stream.num_cached_tokens, prompt_tokens)
    return {
        "input_tokens": prompt_tokens - cached,
        "output_tokens": len(choice.stream.token_ids),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
