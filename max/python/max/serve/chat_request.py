"""The body of POST /v1/chat/completions, validated once, and what it gives the handler:
the conversation the chat template renders, the images it names, its tools, and the
engine's sampling parameters.

A message's content is a string or a list of parts; text parts are joined into one string
(so the template renders them as it always did) unless the message holds images, in which
case the parts stay a list with `{"type": "image"}` where each image was, and each image's
URL is an `ImagePart` in the order of the conversation. `developer` messages are system
messages to the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from max.serve.api_errors import invalid
from max.serve.chat_tools import (
    NamedToolChoice,
    Tool,
    ToolCallMessage,
    check_tools,
    message_tool_calls,
)
from max.serve.generation_request import GenerationRequest
from max.serve.json_kinds import boolean, check_text, integer
from max.serve.request_body import AsSent, RequestBody

ROLES = ("system", "user", "assistant", "developer", "tool")
# The efforts gpt-oss's chat template knows (OpenAI's reasoning models take the same names).
REASONING_EFFORTS = ("low", "medium", "high")
MAX_TOP_LOGPROBS = 20
# Variables the server gives the chat template itself.
RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "add_generation_prompt", "conversation", "tokenize")


@dataclass(frozen=True)
class ImagePart:
    """An image a chat message names: its URL and the request field it came from."""

    url: str
    param: str  # e.g. messages[0].content[1].image_url, for error bodies


class ImageUrl(RequestBody):
    """An image part's `image_url` object."""

    url: str = Field(description="a data URL (data:image/png;base64,...), an http(s) URL, or a file:// URL "
                     "under the server's --allowed-local-media-path")  # fmt: skip
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(RequestBody):
    """One part of a message's content: text, or an image."""

    type: str = Field(description="text or image_url")
    text: str | None = None
    image_url: ImageUrl | str | None = None


class ChatMessage(RequestBody):
    """One message of the conversation."""

    role: str = Field(description="system, developer, user, assistant or tool")
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallMessage] | None = None
    tool_call_id: str | None = None


def _image_part(part: ContentPart, param: str) -> ImagePart:
    """An `image_url` content part: `{"image_url": {"url": ..., "detail": ...}}`, or the
    URL as a plain string (vLLM accepts that form too)."""
    value = part.image_url
    url = value.url if isinstance(value, ImageUrl) else value
    if not isinstance(url, str) or not url:
        raise invalid(f"{param}.image_url", "an image_url part needs 'image_url': {'url': '...'} (a data URL or an http(s) URL)")
    return ImagePart(url, f"{param}.image_url")


def _message_content(message: ChatMessage, index: int, images: list[ImagePart]) -> str | list[dict[str, Any]]:
    """A message's content as the template takes it (see the module docstring); the
    images' URLs are appended to `images`."""
    content = message.content
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        check_text(content, param)
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if part.type == "text" and isinstance(part.text, str):
            check_text(part.text, param)
            parts.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            if message.role != "user":
                raise invalid(f"{param}[{j}]", "image parts are accepted in user messages only")
            images.append(_image_part(part, f"{param}[{j}]"))
            parts.append({"type": "image"})
        else:
            raise invalid(
                param,
                "content parts must be objects {'type': 'text', 'text': ...} or "
                "{'type': 'image_url', 'image_url': {'url': ...}}",
            )
    if any(p["type"] == "image" for p in parts):
        return parts
    # Text only: one string, so that the chat template renders it as it always did.
    return "".join(p["text"] for p in parts)


def _text_length(content: str | list[dict[str, Any]]) -> int:
    """Characters of a message's text (its image parts count in tokens, not here)."""
    if isinstance(content, str):
        return len(content)
    return sum(len(part.get("text", "")) for part in content)


class ChatCompletionRequest(GenerationRequest):
    """A chat completion request: the conversation, its tools, and how to sample the answer."""

    prompt_param: ClassVar[str] = "messages"

    messages: list[ChatMessage]
    logprobs: Annotated[bool | None, AsSent] = None
    top_logprobs: Annotated[int | None, AsSent] = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Annotated[bool | None, AsSent] = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, description="extra variables of the chat template, e.g. {'enable_thinking': false}"
    )

    _conversation: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _images: list[ImagePart] = PrivateAttr(default_factory=list)
    _tool_specs: list[dict[str, Any]] | None = PrivateAttr(default=None)

    def _check(self) -> None:
        self._check_common()
        self._check_messages()
        self._check_max_tokens(low=1, default=None)
        self.logprobs = boolean(self.logprobs, "logprobs", False)
        self.top_logprobs = integer(self.top_logprobs, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        effort = self.reasoning_effort
        if effort is not None and effort not in REASONING_EFFORTS:
            raise invalid("reasoning_effort", f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}")
        for key in self.chat_template_kwargs or {}:
            if key in RESERVED_TEMPLATE_VARIABLES:
                raise invalid("chat_template_kwargs", f"'chat_template_kwargs' may not set {key!r} (the server sets it)")
        self._tool_specs, self.tool_choice, self.parallel_tool_calls = check_tools(
            self.tools, self.tool_choice, self.parallel_tool_calls
        )
        self._check_sampling()
        self._check_constraint()

    def _check_messages(self) -> None:
        if not self.messages:
            raise invalid("messages", "'messages' must be a non-empty array")
        conversation, images = [], []
        for i, message in enumerate(self.messages):
            role = message.role
            if role not in ROLES:
                raise invalid(f"messages[{i}].role", f"unknown role {role!r}")
            entry = {"role": "system" if role == "developer" else role, "content": _message_content(message, i, images)}
            if role == "assistant" and message.tool_calls:
                entry["tool_calls"] = message_tool_calls(message.tool_calls, i)
            if role == "tool":
                if not isinstance(message.tool_call_id, str):
                    raise invalid(f"messages[{i}].tool_call_id", "a tool message needs its 'tool_call_id' (a string)")
                entry["tool_call_id"] = message.tool_call_id
            conversation.append(entry)
        self._conversation, self._images = conversation, images

    # -- what the handler reads ------------------------------------------------------------
    @property
    def conversation(self) -> list[dict[str, Any]]:
        """The messages as the chat template takes them (see the module docstring)."""
        return self._conversation

    @property
    def images(self) -> list[ImagePart]:
        """The images of the conversation, in order."""
        return self._images

    @property
    def tool_specs(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template takes them (None: no tools)."""
        return self._tool_specs

    @property
    def uses_tools(self) -> bool:
        """The model is offered the tools (there are some and tool_choice is not none)."""
        return bool(self._tool_specs) and self.tool_choice != "none"

    @property
    def forces_tool_calls(self) -> bool:
        """tool_choice required or named: the answer must be calls."""
        return bool(self._tool_specs) and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice))

    @property
    def callable_tools(self) -> list[dict[str, Any]]:
        """The tools a forced answer may call: the named one, or all of them."""
        specs = self._tool_specs or []
        if isinstance(self.tool_choice, NamedToolChoice):
            return [s for s in specs if s["function"]["name"] == self.tool_choice.function.name]
        return specs

    @property
    def logprob_alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def prompt_chars(self) -> int:
        return sum(_text_length(m["content"]) for m in self._conversation)

    def template_kwargs(self) -> dict[str, Any]:
        """The template variables the request sets itself (`chat_template_kwargs`, e.g.
        Qwen3's enable_thinking, and the reasoning effort)."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort:
            kwargs["reasoning_effort"] = self.reasoning_effort
        return kwargs
