"""Tool calls in model output: the families' formats, their parsers and their grammars.

Four formats are known:
- `hermes` (Qwen 2.5/3, Hermes, and the fallback for chat templates that know no tools):
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call,
  possibly after some text.
- `llama3_json` (Llama 3.1+): the whole answer is `{"name": ..., "parameters": {...}}`
  (optionally after `<|python_tag|>`), several calls separated by `;`.
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (or, with newer
  tokenizers, `[TOOL_CALLS]name[ARGS]{...}` per call), possibly after some text; the
  marker is a special token that detokenized text may have lost, so an answer that is a
  bare JSON list of calls counts too.
- `pythonic` (Llama 3.2 and 4 style): the answer is a Python list of calls with keyword
  arguments, `[get_weather(city="Paris"), get_time()]` (optionally between
  `<|python_start|>` and `<|python_end|>`); the values are Python literals.

`ToolCallParser` splits a streamed answer into content and complete calls (text that may
still turn into a call is held back); `tool_call_grammar` is the Lark grammar (for
llguidance) that forces an answer made only of calls, for `tool_choice: required` or a
named function. `tools_system_prompt` and `messages_without_tool_fields` let a model whose
chat template ignores tools see them in the hermes format anyway.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERMES = "hermes"
LLAMA3_JSON = "llama3_json"
MISTRAL = "mistral"
PYTHONIC = "pythonic"
FORMATS = (HERMES, LLAMA3_JSON, MISTRAL, PYTHONIC)

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
TAGS = (_OPEN, _CLOSE)
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_TAG, _MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_PYTHON_START, _PYTHON_END = "<|python_start|>", "<|python_end|>"
_CALL_MARKERS = (_PYTHON_TAG, _MISTRAL_TAG, _PYTHON_START)  # what may open an answer made of calls


@dataclass
class ToolCall:
    """One function call the model made: `arguments` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def detect_format(chat_template: str | None) -> str:
    """The tool-call format a model writes, judged from its chat template."""
    template = chat_template or ""
    if _MISTRAL_TAG in template:
        return MISTRAL
    if "func_name1(" in template or _PYTHON_START in template:
        return PYTHONIC
    if _PYTHON_TAG in template or "ipython" in template:
        return LLAMA3_JSON
    return HERMES


def template_knows_tools(chat_template: str | None) -> bool:
    """Whether the chat template renders a `tools` list itself."""
    return "tools" in (chat_template or "")


def _call_from_json(value: Any) -> ToolCall | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as JSON text already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(value["name"], json.dumps(args, ensure_ascii=False))


def _parse_hermes_block(body: str) -> ToolCall | None:
    try:
        return _call_from_json(json.loads(body.strip()))
    except ValueError:
        return None


def _parse_llama3(text: str) -> list[ToolCall] | None:
    """The calls of a whole llama3_json answer, or None if it is not made of calls."""
    text = text.strip()
    if text.startswith(_PYTHON_TAG):
        text = text[len(_PYTHON_TAG) :].lstrip()
    decoder = json.JSONDecoder()
    calls, pos = [], 0
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        call = _call_from_json(value)
        if call is None:
            return None
        calls.append(call)
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    return calls or None


def _parse_mistral(text: str) -> list[ToolCall] | None:
    """The calls of a mistral answer's calls part, or None if it is not made of calls."""
    chunks = [c.strip() for c in text.strip().split(_MISTRAL_TAG) if c.strip()]
    calls: list[ToolCall] = []
    for chunk in chunks:
        if chunk.startswith("["):  # a JSON list of {"name", "arguments"}
            try:
                values = json.loads(chunk)
            except ValueError:
                return None
            found = [_call_from_json(v) for v in values] if isinstance(values, list) else [None]
        elif _MISTRAL_ARGS in chunk:  # name[ARGS]{...}
            name, _, args = chunk.partition(_MISTRAL_ARGS)
            try:
                found = [_call_from_json({"name": name.strip(), "arguments": json.loads(args)})]
            except ValueError:
                return None
        else:
            return None
        if not found or any(call is None for call in found):
            return None
        calls.extend(found)
    return calls or None


def _parse_pythonic(text: str) -> list[ToolCall] | None:
    """The calls of a pythonic answer (`[f(a=1), g()]`), or None if it is not made of calls."""
    text = text.strip().removeprefix(_PYTHON_START).removesuffix(_PYTHON_END).strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = []
    for node in nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        except (ValueError, TypeError, SyntaxError):
            return None
        if len(args) != len(node.keywords):
            return None  # **kwargs
        calls.append(ToolCall(node.func.id, json.dumps(args, ensure_ascii=False)))
    return calls or None


# How each list-shaped format reads the calls part of an answer (others: llama3_json's reader).
_CALL_LISTS = {MISTRAL: _parse_mistral, PYTHONIC: _parse_pythonic}


class ToolCallParser:
    """Splits an answer, fed as text deltas, into content and tool calls.

    `feed` returns the content that is certainly not part of a call and the calls completed
    by this delta; `finish` flushes what was held back (an unterminated call that parses
    counts as a call, anything else as content).
    """

    def __init__(self, format: str) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown tool-call format {format!r}")
        self.format = format
        self.calls: list[ToolCall] = []
        self.content = ""
        self._buffer = ""
        self._in_call = False
        self._mode: str | None = None  # "calls" (a bare JSON answer) or "text", from its first character
        self.call_bodies: list[str] = []  # the text of each hermes block that became a call

    @property
    def open_call_text(self) -> str | None:
        """The text written so far inside an open hermes `<tool_call>` block (None outside
        one): what a streaming client may see of a call before it is whole."""
        return self._buffer if self._in_call and self.format == HERMES else None

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content and calls that `text` (the next piece of the answer) completes."""
        self._buffer += text
        if self._mode is None:
            head = self._buffer.lstrip()
            if not head:
                return "", []
            # An answer that opens with a JSON object may be a bare call (llama3_json's
            # format; small hermes models also drop the tags): it is read whole at the end.
            # So is a list, in the formats whose calls are a list (mistral, pythonic).
            if any(marker.startswith(head) and marker != head for marker in _CALL_MARKERS):
                return "", []  # may still become a marker
            opens_calls = head[0] == "{" or head.startswith((_PYTHON_TAG, _MISTRAL_TAG, _PYTHON_START))
            self._mode = "calls" if opens_calls or (head[0] == "[" and self.format in (MISTRAL, PYTHONIC)) else "text"
        if self._mode == "calls":
            return "", []
        if self.format == MISTRAL:
            return self._feed_mistral()
        if self.format in (LLAMA3_JSON, PYTHONIC):
            text, self._buffer = self._buffer, ""
            return self._emit(text, [])
        return self._feed_hermes()

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Everything held back, at the end of the answer."""
        rest, self._buffer = self._buffer, ""
        if self._mode == "calls":
            calls = _CALL_LISTS.get(self.format, _parse_llama3)(rest)
            return self._emit("", calls) if calls else self._emit(rest, [])
        if self._in_call:
            self._in_call = False
            call = _parse_hermes_block(rest)
            if call is not None:
                self.call_bodies.append(rest)
            return self._emit("", [call]) if call else self._emit(_OPEN + rest, [])
        return self._emit(rest, [])

    def _emit(self, content: str, calls: list[ToolCall]) -> tuple[str, list[ToolCall]]:
        if self.calls and not content.strip():
            content = ""  # the separators between and after calls
        self.content += content
        self.calls.extend(calls)
        return content, calls

    def _feed_mistral(self) -> tuple[str, list[ToolCall]]:
        """Text until `[TOOL_CALLS]`; after it, calls, read whole at the end."""
        start = self._buffer.find(_MISTRAL_TAG)
        if start >= 0:
            content, self._buffer = self._buffer[:start], self._buffer[start:]
            self._mode = "calls"
            return self._emit(content, [])
        keep = _held_back(self._buffer, _MISTRAL_TAG)
        content, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep :]
        return self._emit(content, [])

    def _feed_hermes(self) -> tuple[str, list[ToolCall]]:
        content, calls = "", []
        while True:
            if self._in_call:
                end = self._buffer.find(_CLOSE)
                if end < 0:
                    break
                body, self._buffer = self._buffer[:end], self._buffer[end + len(_CLOSE) :]
                self._in_call = False
                call = _parse_hermes_block(body)
                if call is not None:
                    calls.append(call)
                    self.call_bodies.append(body)
                else:  # not a call after all: give the text back as content
                    content += _OPEN + body + _CLOSE
            else:
                start = self._buffer.find(_OPEN)
                if start < 0:
                    keep = _held_back(self._buffer, _OPEN)
                    content += self._buffer[: len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content += self._buffer[:start]
                self._buffer = self._buffer[start + len(_OPEN) :]
                self._in_call = True
        return self._emit(content, calls)


def _held_back(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (it may still become one)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def parse_tool_calls(text: str, format: str) -> tuple[str, list[ToolCall]]:
    """The content and the calls of a whole answer."""
    parser = ToolCallParser(format)
    parser.feed(text)
    parser.finish()
    return parser.content, parser.calls


def _call_schema(tool: dict[str, Any], format: str) -> dict[str, Any]:
    function = tool["function"]
    args_key = "parameters" if format == LLAMA3_JSON else "arguments"
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, args_key: parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def tool_call_grammar(
    tools: Sequence[dict[str, Any]], format: str, parallel: bool, tag_ids: tuple[int, int] | None = None
) -> str:
    """A Lark grammar (llguidance's dialect) of answers made only of calls of `tools`
    (one, or one or more when `parallel`). `tag_ids`: the token ids of `<tool_call>` and
    `</tool_call>` where the tokenizer has them as single (added) tokens: the grammar must
    then name the tokens, which llguidance does not match from their text."""
    schemas = [_call_schema(t, format) for t in tools]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    body = json.dumps({**schema, "x-guidance": options})
    if format == PYTHONIC:
        raise ValueError("forcing tool calls is not supported for the pythonic format yet")
    if format == MISTRAL:
        start = 'start: "[" call (", " call)* "]"' if parallel else 'start: "[" call "]"'
        return f"{start}\ncall: %json {body}\n"
    if format == LLAMA3_JSON:
        call, separator = f"%json {body}", '"; "'
    else:
        if tag_ids is not None:
            call = f'<[{tag_ids[0]}]> "\\n" %json {body} "\\n" <[{tag_ids[1]}]>'
        else:
            call = f'"{_OPEN}\\n" %json {body} "\\n{_CLOSE}"'
        separator = '"\\n"'
    start = f"call ({separator} call)*" if parallel else "call"
    return f"start: {start}\ncall: {call}\n"


def tools_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """Tells a model whose chat template ignores tools how to call them (hermes format)."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f'{_OPEN}{_CLOSE} XML tags:\n{_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{_CLOSE}'
    )


def messages_without_tool_fields(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """The chat in plain role/content messages, for templates that know no tools: the tools
    in the system prompt, calls as hermes blocks, results as `<tool_response>` user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            blocks = [
                f"{_OPEN}\n{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}\n{_CLOSE}"
                for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "\n".join([content, *blocks] if content else blocks)})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        prompt = tools_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
