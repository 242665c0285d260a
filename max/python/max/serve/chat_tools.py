"""The tools of a chat request: OpenAI's function `tools`, `tool_choice` and
`parallel_tool_calls`, and the tool calls of earlier assistant messages.

The chat template renders the tools as the client sent them (templates print a tool as JSON,
so its keys keep their order); `tool_choice` defaults to auto with tools and none
without; a named choice must name one of the tools.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field

from max.serve.api_errors import invalid
from max.serve.json_kinds import boolean
from max.serve.request_body import RequestBody

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FunctionCall(RequestBody):
    """A function call: its name and its arguments (JSON text, as OpenAI sends them, or an object)."""

    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCallMessage(RequestBody):
    """A tool call of an earlier assistant message."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(RequestBody):
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON schema of the arguments")


class Tool(RequestBody):
    """One of `tools`: a function."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(RequestBody):
    """The function a named `tool_choice` names."""

    name: str


class NamedToolChoice(RequestBody):
    """`tool_choice` naming the function the model must call."""

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def check_tools(
    tools: list[Tool] | None, choice: ToolChoice | None, parallel: Any
) -> tuple[list[dict[str, Any]] | None, ToolChoice, bool]:
    """The tools as the chat template takes them (`{"type": "function", "function": ...}`,
    None without any), the tool choice (its default filled in) and `parallel_tool_calls`;
    a 400 naming what is wrong."""
    specs = None
    if tools is not None:
        for i, tool in enumerate(tools):
            if not _TOOL_NAME.match(tool.function.name):
                raise invalid(f"tools[{i}].function.name", "a function name is 1 to 64 letters, digits, '_' or '-'")
        specs = [{"type": "function", "function": tool.function.as_sent()} for tool in tools] or None
    if choice is None:
        choice = "auto" if specs else "none"
    if isinstance(choice, NamedToolChoice):
        if not choice.sent("type"):
            raise invalid("tool_choice", "a named 'tool_choice' is {'type': 'function', 'function': {'name': ...}}")
        name = choice.function.name
        if not any(spec["function"]["name"] == name for spec in specs or []):
            raise invalid("tool_choice", f"'tool_choice' names {name!r}, which is not in 'tools'")
    elif choice != "none" and not specs:
        raise invalid("tool_choice", f"'tool_choice': {choice!r} needs 'tools'")
    return specs, choice, boolean(parallel, "parallel_tool_calls", True)


def message_tool_calls(calls: list[ToolCallMessage], index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` as the chat template takes them, their arguments
    parsed (templates want objects)."""
    path = f"messages[{index}].tool_calls"
    out = []
    for j, call in enumerate(calls):
        args = call.function.arguments if call.function.sent("arguments") else "{}"
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise invalid(f"{path}[{j}].function.arguments", "'arguments' must be JSON text") from None
        out.append({"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": args}})
    return out
