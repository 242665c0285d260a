"""The body of Anthropic's POST /v1/messages (and /v1/messages/count_tokens), validated
once, and the chat completion request it is served as.

Anthropic's conversation maps onto OpenAI's chat: `system` (a string or text blocks) is a
system message; a user message's text and image blocks are content parts (an image's
`source` is base64 data or a URL); its `tool_result` blocks are tool messages (before its
text, as the results answer the previous turn's calls); an assistant message's `tool_use`
blocks are its tool calls, and its `thinking` blocks are dropped (the template shows no past
reasoning). `tools` (name, description, input_schema) are functions; `tool_choice` auto,
any, tool (named) and none are OpenAI's auto, required, named and none, and
`disable_parallel_tool_use` is `parallel_tool_calls: false`. `stop_sequences` are stop
strings; `thinking` enabled or disabled sets the template's `enable_thinking`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from max.serve.api_errors import invalid
from max.serve.chat_request import ChatCompletionRequest
from max.serve.json_kinds import integer, number
from max.serve.request_body import RequestBody

MAX_STOP_SEQUENCES = 16


class ImageSource(RequestBody):
    """An image block's `source`: base64 data with its media type, or a URL."""

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ContentBlock(RequestBody):
    """One block of a message's content: text, image, tool_use, tool_result or thinking."""

    type: str = Field(description="text, image, tool_use, tool_result, thinking or redacted_thinking")
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: dict[str, Any] | None = None  # tool_use
    tool_use_id: str | None = None  # tool_result
    content: str | list[ContentBlock] | None = None  # tool_result
    is_error: bool | None = None  # tool_result
    thinking: str | None = None
    signature: str | None = None


class AnthropicMessage(RequestBody):
    """One turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class SystemBlock(RequestBody):
    """A text block of `system`."""

    type: Literal["text"] = "text"
    text: str


class AnthropicTool(RequestBody):
    """A client tool: a function the model may call, its input described by a JSON schema."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="JSON schema of the tool's input")
    type: str | None = Field(default=None, description="'custom' or absent (server tools are not supported)")


class AnthropicToolChoice(RequestBody):
    """How the model uses the tools."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(RequestBody):
    """Extended thinking: on (with a token budget) or off."""

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = None


class CountTokensRequest(RequestBody):
    """The body of /v1/messages/count_tokens: a conversation, its system prompt and tools."""

    model: str
    messages: list[AnthropicMessage]
    system: str | list[SystemBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: ThinkingConfig | None = None

    def chat_body(self) -> dict[str, Any]:
        """The OpenAI chat completion body this request is served as."""
        body: dict[str, Any] = {"model": self.model, "messages": self._chat_messages()}
        if self.tools:
            for i, tool in enumerate(self.tools):
                if tool.type not in (None, "custom"):
                    raise invalid(f"tools[{i}].type", f"server tools ({tool.type!r}) are not supported; only client tools")
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}}
                for t in self.tools
            ]
        choice = self.tool_choice
        if choice is not None:
            if choice.type == "tool":
                if not choice.name:
                    raise invalid("tool_choice.name", "a tool_choice of type 'tool' needs the tool's 'name'")
                body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        if self.thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": self.thinking.type == "enabled"}
        return body

    def _chat_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        system = self.system
        if isinstance(system, list):
            system = "\n".join(block.text for block in system)
        if system:
            messages.append({"role": "system", "content": system})
        if not self.messages:
            raise invalid("messages", "'messages' must be a non-empty array")
        for i, message in enumerate(self.messages):
            if isinstance(message.content, str):
                messages.append({"role": message.role, "content": message.content})
            elif message.role == "user":
                messages.extend(_user_turn(message.content, f"messages[{i}].content"))
            else:
                messages.append(_assistant_turn(message.content, f"messages[{i}].content"))
        return messages


class MessagesRequest(CountTokensRequest):
    """The body of POST /v1/messages: the conversation, and how to sample the answer."""

    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None

    def _check(self) -> None:
        integer(self.max_tokens, "max_tokens", None, 1)
        number(self.temperature, "temperature", 1.0, 0.0, 1.0)
        if self.stop_sequences is not None and len(self.stop_sequences) > MAX_STOP_SEQUENCES:
            raise invalid("stop_sequences", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if self.stop_sequences is not None and not all(self.stop_sequences):
            raise invalid("stop_sequences", "a stop sequence must not be empty")

    def chat_body(self) -> dict[str, Any]:
        body = super().chat_body()
        body["max_tokens"] = self.max_tokens
        body["stream"] = bool(self.stream)
        for key in ("temperature", "top_p", "top_k"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.stop_sequences:
            body["stop"] = list(self.stop_sequences)
        return body


class MessagesChatRequest(ChatCompletionRequest):
    """A /v1/messages request as the chat completion it is served as; `source` keeps the
    Anthropic body (its stop sequences name the one that ended the answer)."""

    _source: MessagesRequest | None = PrivateAttr(default=None)

    @classmethod
    def from_json(cls, body: Any) -> MessagesChatRequest:
        source = MessagesRequest.from_json(body)
        chat = super().from_json(source.chat_body())
        chat._source = source
        return chat

    @property
    def source(self) -> MessagesRequest:
        """The Anthropic body."""
        assert self._source is not None
        return self._source


# -- content blocks -------------------------------------------------------------------------
def _image_part(block: ContentBlock, param: str) -> dict[str, Any]:
    source = block.source
    if source is None:
        raise invalid(f"{param}.source", "an image block needs its 'source'")
    if source.type == "base64":
        if not source.media_type or not source.data:
            raise invalid(f"{param}.source", "a base64 image source needs 'media_type' and 'data'")
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        if not source.url:
            raise invalid(f"{param}.source.url", "a url image source needs its 'url'")
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(block: ContentBlock, param: str) -> str:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for j, inner in enumerate(content):
            if inner.type != "text" or inner.text is None:
                raise invalid(f"{param}.content[{j}]", "tool results may hold text blocks only")
            parts.append(inner.text)
        text = "\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _user_turn(blocks: list[ContentBlock], param: str) -> list[dict[str, Any]]:
    """A user message's blocks: its tool results as tool messages, then its text and images."""
    results, parts = [], []
    for j, block in enumerate(blocks):
        where = f"{param}[{j}]"
        if block.type == "text" and block.text is not None:
            parts.append({"type": "text", "text": block.text})
        elif block.type == "image":
            parts.append(_image_part(block, where))
        elif block.type == "tool_result":
            if not block.tool_use_id:
                raise invalid(f"{where}.tool_use_id", "a tool_result block needs its 'tool_use_id'")
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _tool_result_text(block, where)})
        else:
            raise invalid(where, f"a user message may hold text, image and tool_result blocks, not {block.type!r}")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_turn(blocks: list[ContentBlock], param: str) -> dict[str, Any]:
    """An assistant message's blocks: its text, and its tool_use blocks as tool calls."""
    text, calls = [], []
    for j, block in enumerate(blocks):
        where = f"{param}[{j}]"
        if block.type == "text" and block.text is not None:
            text.append(block.text)
        elif block.type == "tool_use":
            if not block.id or not block.name:
                raise invalid(where, "a tool_use block needs its 'id' and 'name'")
            arguments = json.dumps(block.input or {}, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif block.type in ("thinking", "redacted_thinking"):
            continue  # past reasoning is not shown to the model again
        else:
            raise invalid(where, f"an assistant message may hold text, tool_use and thinking blocks, not {block.type!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        message["tool_calls"] = calls
    return message
