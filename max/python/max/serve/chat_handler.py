"""POST /v1/chat/completions: a conversation in, an assistant message out.

The prompt is the chat template's rendering of the conversation (with its tools, and its
images placed on their image tokens: chat_prompt.py). Each choice follows its text as it
comes: a harmony model's (gpt-oss) analysis channel becomes `reasoning_content`, and with
tools, calls in the model's format become `tool_calls` (then the finish reason is
`tool_calls`). `tool_choice` required or named constrains the answer to calls with a
grammar. Chat logprobs cover the message's tokens: the end-of-turn token is left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from max.errors import MaxError
from max.pipelines.lib import RequestTextStream, TextDelta, TextTokenizer
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.pipelines.lib.tokens.harmony import HarmonyParser, HarmonyTokens
from max.pipelines.lib.tokens.reasoning import (
    THINK_CLOSE,
    THINK_OPEN,
    ReasoningParser,
    constraint_after_reasoning,
    prompt_opens_reasoning,
)
from max.pipelines.lib.tokens.tool_call_stream import ToolCallStreamer
from max.pipelines.lib.tokens.tool_calls import TAGS, ToolCallParser, tool_call_grammar
from max.serve import response_rendering as render
from max.serve.api_errors import ApiError, invalid
from max.serve.chat_prompt import encode_with_images, template_inputs, tool_format
from max.serve.chat_request import ChatCompletionRequest
from max.serve.generation_choice import Choice
from max.serve.generation_handler import EncodedPrompts, GenerationHandler
from max.serve.server_state import ServerState

# The prompt's last tokens, where a chat template that opens the reasoning put `<think>`.
PROMPT_TAIL_TOKENS = 16


@dataclass
class AssistantChoice(Choice):
    """A chat choice: an assistant message, which may hold reasoning and tool calls."""

    harmony: HarmonyParser | None = None  # a harmony model's chat: splits final from analysis
    reasoning: ReasoningParser | None = None  # --reasoning-parser: splits <think> from the answer
    tools: ToolCallParser | None = None  # a chat with tools: splits calls from content
    tool_calls_sent: int = 0  # streaming: calls sent so far (their `index`)
    streamer: ToolCallStreamer | None = None  # streaming: sends calls' arguments in fragments

    @property
    def finish_reason(self) -> str | None:
        """The stream's, or `tool_calls` when the answer ended with calls."""
        reason = self.stream.finish_reason
        if reason == "stop" and self.tools is not None and self.tools.calls:
            return "tool_calls"
        return reason


class ChatCompletionHandler(GenerationHandler):
    """Serves /v1/chat/completions (see the module docstring)."""

    request_model = ChatCompletionRequest
    id_prefix = "chatcmpl"
    completion_kind = render.CHAT_COMPLETION
    chunk_kind = render.CHAT_CHUNK

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._harmony: tuple[TextTokenizer | None, HarmonyTokens | None] | None = None

    # -- the prompt ------------------------------------------------------------------------
    def _check_tokenizer_free(self, gen: ChatCompletionRequest) -> None:
        raise ApiError(
            400,
            "this server runs without a tokenizer (--skip-tokenizer-init): chat completions need one; "
            "send token-id prompts to /v1/completions",
            param="messages",
            code="tokenizer_required",
        )

    async def _encode(self, gen: ChatCompletionRequest) -> EncodedPrompts:
        tokenizer = self.state.tokenizer
        messages, template_kwargs = template_inputs(tokenizer, gen)
        if gen.images:
            ids, images = await encode_with_images(tokenizer, self.state.media, gen, messages, template_kwargs)
            return EncodedPrompts([ids], images)
        return EncodedPrompts([await asyncio.to_thread(tokenizer.encode_chat, messages, template_kwargs)])

    def _output_constraint(self, gen: ChatCompletionRequest) -> tuple[str, StructuredOutput] | None:
        """The request's own, or (tool_choice required or named) a grammar that lets the
        model write only calls."""
        if not (gen.forces_tool_calls and self.state.tokenizer is not None):
            return gen.output_constraint
        if gen.output_constraint is not None:
            raise invalid(
                gen.output_constraint[0],
                f"'tool_choice': {_choice_value(gen)!r} cannot be combined with an output constraint",
            )
        tokenizer = self.state.tokenizer
        tags = [tokenizer.encode(tag, add_special_tokens=False) for tag in TAGS]
        tag_ids = (tags[0][0], tags[1][0]) if all(len(ids) == 1 for ids in tags) else None
        try:
            grammar = tool_call_grammar(
                gen.callable_tools, tool_format(tokenizer, self.state.tool_call_parser), gen.parallel_tool_calls, tag_ids
            )
        except ValueError as e:
            raise invalid("tool_choice", str(e)) from None
        return "tools", StructuredOutput("lark", grammar)

    # -- the choices -----------------------------------------------------------------------
    def _choices(self, gen: ChatCompletionRequest, prompts: EncodedPrompts, base_id: str,
                 constraint: StructuredOutput | None) -> list[Choice]:  # fmt: skip
        """With --reasoning-parser, an output constraint holds the answer after the reasoning."""
        family, tokenizer = self.state.reasoning_parser, self.state.tokenizer
        if constraint is not None and family is not None and tokenizer is not None:
            tail = tokenizer.decode(prompts.ids[0][-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
            try:
                constraint = constraint_after_reasoning(constraint, family, prompt_opens_reasoning(tail), _tag_ids(tokenizer))
            except MaxError as e:
                raise invalid(self._output_constraint(gen)[0], str(e)) from None
        return super()._choices(gen, prompts, base_id, constraint)

    def _new_choice(self, gen: ChatCompletionRequest, index: int, request_id: str, prompt_index: int,
                    ids: list[int], stream: RequestTextStream, images: tuple[ImageInput, ...]) -> AssistantChoice:  # fmt: skip
        tools = ToolCallParser(tool_format(self.state.tokenizer, self.state.tool_call_parser)) if gen.uses_tools else None
        # A stream sends a call's name, then its arguments in fragments as they are written
        # (so do the Messages and Responses streams built on this handler).
        streamer = ToolCallStreamer(tools) if tools is not None and gen.stream else None
        harmony = self._harmony_parser(ids)  # a harmony model's channels say what is reasoning
        return AssistantChoice(
            index, request_id, prompt_index, ids, stream, images, harmony=harmony, tools=tools,
            reasoning=self._reasoning_parser(ids) if harmony is None else None, streamer=streamer,
        )  # fmt: skip

    def _reasoning_parser(self, prompt_ids: list[int]) -> ReasoningParser | None:
        """A `<think>` splitter (--reasoning-parser), started inside the reasoning when the
        prompt's end (the chat template) opened the block."""
        family, tokenizer = self.state.reasoning_parser, self.state.tokenizer
        if family is None or tokenizer is None:
            return None
        tail = tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        return ReasoningParser(family, prompt_opens_reasoning(tail))

    def _harmony_parser(self, prompt_ids: list[int]) -> HarmonyParser | None:
        """A parser of the harmony channels, for a harmony model's chat choice (else None)."""
        tokenizer = self.state.tokenizer
        if self._harmony is None or self._harmony[0] is not tokenizer:
            self._harmony = (tokenizer, HarmonyTokens.find(tokenizer))
        tokens = self._harmony[1]
        return HarmonyParser(tokenizer, tokens, prompt_ids) if tokens is not None else None

    def _shape_delta(self, choice: AssistantChoice, delta: TextDelta) -> TextDelta:
        if choice.harmony is not None:
            delta = choice.harmony.split(delta)
        if choice.reasoning is not None:
            delta = choice.reasoning.split(delta)
        if choice.tools is not None:
            delta = _split_tool_calls(choice.tools, delta, choice.streamer)
        if delta.logprobs and delta.finished:
            delta = self._without_end_token(delta)
        return delta

    def _without_end_token(self, delta: TextDelta) -> TextDelta:
        """Chat logprobs cover the message's tokens: the end-of-turn token that finished
        it (EOS, which adds no text) is left out, as OpenAI does."""
        last = delta.logprobs[-1].token_id
        if delta.stopped_by_string or last not in self.state.tokenizer.eos_token_ids:
            return delta
        return dataclasses.replace(delta, logprobs=delta.logprobs[:-1])

    # -- the answer ------------------------------------------------------------------------
    def _render_choice(self, gen: ChatCompletionRequest, choice: AssistantChoice) -> dict[str, Any]:
        logprobs = None
        if gen.logprob_alternatives is not None:
            logprobs = render.chat_logprobs(self.state.tokenizer, choice.logprobs)
        return {
            "index": choice.index,
            "message": render.assistant_message(choice.stream.text, choice.harmony or choice.reasoning, choice.tools),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
            **self._ids_fields(gen, choice),
        }

    def _stream_opening(self, gen: ChatCompletionRequest, choices: list[AssistantChoice]) -> list[dict[str, Any]]:
        """Each choice's first chunk says who speaks."""
        return [
            {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for c in choices
        ]

    def _stream_item(
        self, gen: ChatCompletionRequest, choice: AssistantChoice, delta: TextDelta, finish: str | None
    ) -> dict[str, Any]:
        logprobs = None
        if gen.logprob_alternatives is not None and delta.logprobs:
            logprobs = render.chat_logprobs(self.state.tokenizer, delta.logprobs)
        body = render.assistant_delta(delta, finish, choice.tool_calls_sent)
        choice.tool_calls_sent += len(delta.tool_calls)
        return {"index": choice.index, "delta": body, "logprobs": logprobs, "finish_reason": finish}


def _choice_value(gen: ChatCompletionRequest) -> str | dict[str, Any]:
    """`tool_choice` as the client wrote it, for messages."""
    choice = gen.tool_choice
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice.function.name}}


def _tag_ids(tokenizer: TextTokenizer) -> tuple[int, int] | None:
    """The ids of `<think>` and `</think>` where each is one token of the tokenizer."""
    tags = [tokenizer.encode(tag, add_special_tokens=False) for tag in (THINK_OPEN, THINK_CLOSE)]
    return (tags[0][0], tags[1][0]) if all(len(ids) == 1 for ids in tags) else None


def _split_tool_calls(parser: ToolCallParser, delta: TextDelta, streamer: ToolCallStreamer | None) -> TextDelta:
    """`delta` with the text of tool calls taken out of its content and the calls it
    completes in `tool_calls` (with a `streamer`: the fragments of calls it writes)."""
    content, calls = parser.feed(delta.text)
    if delta.finished:
        rest, more = parser.finish()
        content, calls = content + rest, calls + more
    return dataclasses.replace(delta, text=content, tool_calls=streamer.fragments(calls) if streamer else calls)
