"""The body of OpenAI's POST /v1/responses, validated once, and the chat completion request
it is served as.

`input` is a string (one user message) or a list of items: messages (role user, system,
developer or assistant; content a string or parts: input_text, input_image with an
`image_url`, output_text), `function_call` items (an assistant's calls) and
`function_call_output` items (their results, as tool messages); reasoning items are
dropped (the template shows no past reasoning). `instructions` is the first system
message. An earlier response's conversation (`previous_response_id`, looked up by the
handler) comes before `input`; its instructions do not carry over, as OpenAI's do not.
Function `tools` (name, description, parameters), `tool_choice` (none, auto, required or
`{"type": "function", "name"}`), `text.format` (text, json_object, json_schema) and
`max_output_tokens` map onto chat's fields.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from max.serve.api_errors import invalid
from max.serve.chat_request import ChatCompletionRequest
from max.serve.json_kinds import check_text
from max.serve.request_body import RequestBody


class InputContent(RequestBody):
    """One part of an input message's content."""

    type: str = Field(description="input_text, input_image, output_text or refusal")
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_id: str | None = None
    refusal: str | None = None


class InputItem(RequestBody):
    """One item of `input`: a message, a function call, or a function call's output."""

    type: str | None = Field(default=None, description="message (the default), function_call, function_call_output or reasoning")
    role: str | None = None
    content: str | list[InputContent] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    id: str | None = None


class FunctionTool(RequestBody):
    """A function the model may call (Responses' flat shape)."""

    type: str = Field(default="function", description="function (no other tool type is served)")
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(RequestBody):
    """`tool_choice` naming the function the model must call."""

    type: Literal["function"]
    name: str


class TextFormat(RequestBody):
    """`text.format`: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextOptions(RequestBody):
    """`text`: the output's format."""

    format: TextFormat | None = None


class ReasoningOptions(RequestBody):
    """`reasoning`: the effort (gpt-oss's chat template reads it)."""

    effort: str | None = None


class ResponsesRequest(RequestBody):
    """The body of POST /v1/responses (see the module docstring)."""

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def input_messages(self) -> list[dict[str, Any]]:
        """`input` as chat messages (without the instructions)."""
        if isinstance(self.input, str):
            check_text(self.input, "input")
            return [{"role": "user", "content": self.input}]
        if not self.input:
            raise invalid("input", "'input' must be a string or a non-empty list of items")
        messages: list[dict[str, Any]] = []
        for i, item in enumerate(self.input):
            _add_item(messages, item, f"input[{i}]")
        return messages

    def chat_body(self, earlier: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat completion body this request is served as, after the `earlier`
        conversation (a previous response's)."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        body: dict[str, Any] = {"model": self.model, "messages": [*messages, *earlier, *self.input_messages()]}
        if self.tools:
            body["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(self.tools)]
        if isinstance(self.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.schema_ is None:
                raise invalid("text.format.schema", "a json_schema format needs its 'schema'")
            schema = {"name": fmt.name or "output", "schema": fmt.schema_, "strict": bool(fmt.strict)}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if self.reasoning is not None and self.reasoning.effort is not None:
            body["reasoning_effort"] = self.reasoning.effort
        for key, value in (("parallel_tool_calls", self.parallel_tool_calls), ("max_tokens", self.max_output_tokens),
                           ("temperature", self.temperature), ("top_p", self.top_p), ("stream", self.stream)):  # fmt: skip
            if value is not None:
                body[key] = value
        return body


class ResponsesChatRequest(ChatCompletionRequest):
    """A /v1/responses request as the chat completion it is served as; `source` keeps the
    Responses body and `history` the conversation it continues (for the store)."""

    _source: ResponsesRequest | None = PrivateAttr(default=None)
    _history: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @classmethod
    def of(cls, source: ResponsesRequest, earlier: list[dict[str, Any]]) -> ResponsesChatRequest:
        """The chat request of `source`, continuing the `earlier` conversation."""
        chat = cls.from_json(source.chat_body(earlier))
        chat._source = source
        chat._history = [*earlier, *source.input_messages()]
        return chat

    @property
    def source(self) -> ResponsesRequest:
        """The Responses body."""
        assert self._source is not None
        return self._source

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation so far, in chat messages: the earlier one and this input."""
        return self._history


# -- input items ----------------------------------------------------------------------------
_ROLES = ("user", "system", "developer", "assistant")


def _add_item(messages: list[dict[str, Any]], item: InputItem, param: str) -> None:
    kind = item.type or "message"
    if kind == "message":
        if item.role not in _ROLES:
            raise invalid(f"{param}.role", f"a message's role is one of {', '.join(_ROLES)}, not {item.role!r}")
        messages.append({"role": item.role, "content": _content(item, param)})
    elif kind == "function_call":
        if not item.call_id or not item.name:
            raise invalid(param, "a function_call item needs its 'call_id' and 'name'")
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments or "{}"}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        if not item.call_id or item.output is None:
            raise invalid(param, "a function_call_output item needs its 'call_id' and 'output'")
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    elif kind == "reasoning":
        return  # past reasoning is not shown to the model again
    else:
        raise invalid(f"{param}.type", f"input items may be message, function_call or function_call_output, not {kind!r}")


def _content(item: InputItem, param: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: a string, or text and image parts."""
    content = item.content
    if content is None:
        raise invalid(f"{param}.content", "a message needs its 'content'")
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if part.type in ("input_text", "output_text", "text") and part.text is not None:
            parts.append({"type": "text", "text": part.text})
        elif part.type == "refusal" and part.refusal is not None:
            parts.append({"type": "text", "text": part.refusal})
        elif part.type == "input_image":
            if not part.image_url:
                raise invalid(where, "an input_image needs its 'image_url' (uploaded files are not supported)")
            parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        else:
            raise invalid(where, f"content parts may be input_text, input_image or output_text, not {part.type!r}")
    return parts


def _chat_tool(tool: FunctionTool, index: int) -> dict[str, Any]:
    if tool.type != "function":
        raise invalid(f"tools[{index}].type", f"only function tools are supported, not {tool.type!r}")
    if not tool.name:
        raise invalid(f"tools[{index}].name", "a function tool needs its 'name'")
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or {"type": "object", "properties": {}}}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def output_as_message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output as the assistant chat message that continues its conversation."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]
    return message


def arguments_text(value: Any) -> str:
    """Arguments as the JSON text a function_call item carries."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
