"""OpenAI request parsing and validation, and the error shape of the API.

Both `/v1/chat/completions` and `/v1/completions` bodies become a `GenerationRequest`
(a chat's `image_url` parts become `{"type": "image"}` parts of its messages, their URLs
`ImagePart`s in order); anything malformed raises `ApiError`, which the server turns into
`{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.structured_output import StructuredOutput
from max.serve.error_redaction import redact


class ApiError(Exception):
    """An error answered to the client in OpenAI's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers  # e.g. Retry-After on 429 and 503

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response (a server error's message without internals)."""
        message = redact(self.message) if self.status >= 500 else self.message
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    """A 400 about one parameter."""
    return ApiError(400, message, param=param, code="invalid_parameter")


_MISSING = object()
MAX_TOP_K = 2**31 - 1  # the sampler reads top_k as int32


def _check_text(text: str, param: str) -> None:
    """Refuses text that is not valid Unicode: JSON's \\ud800 escapes decode to unpaired
    surrogates, which no tokenizer (and no UTF-8 output) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise invalid(param, f"'{param}' holds an unpaired surrogate (\\u{ord(bad):04x}), which is not valid text") from None


class _Fields:
    """Typed access to a JSON object's fields, with errors that name the field."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        self.body = body

    def get(self, name: str, kinds: tuple[type, ...], default: Any = None, nullable: bool = True) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING or (value is None and nullable):
            return default
        # bool is an int in Python; JSON true is not a number.
        if isinstance(value, bool) and bool not in kinds:
            raise invalid(name, f"'{name}' must be {_kind_names(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise invalid(name, f"'{name}' must be {_kind_names(kinds)}, got {type(value).__name__}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = float(self.get(name, (int, float), default))
        if not low <= value <= high:
            raise invalid(name, f"'{name}' must be between {low} and {high}, got {value}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
        value = self.get(name, (int,), default)
        if value is None:
            return None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise invalid(name, f"'{name}' must be {bound}, got {value}")
        return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


@dataclass
class GenerationRequest:
    """A parsed generation request of either endpoint."""

    model: str
    chat_messages: list[dict[str, Any]] | None  # chat endpoint
    prompts: list[str | list[int]]  # completions endpoint (one or more prompts)
    params: SamplingParams
    max_tokens: int | None  # None: up to the context length
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None  # alternatives per token (chat: top_logprobs), None: no logprobs
    return_token_ids: bool = False  # add the ids (prompt_token_ids, token_ids) to each choice
    reasoning_effort: str | None = None  # chat: passed to the chat template (gpt-oss)
    constraint_param: str | None = None  # the field that set params.structured_output
    tools: list[dict[str, Any]] | None = None  # chat: OpenAI function tools
    tool_choice: str | dict[str, Any] = "none"  # "none", "auto", "required" or a named function
    parallel_tool_calls: bool = True
    images: list[ImagePart] = field(default_factory=list)  # chat: in the order of the image parts


def _sampling(f: _Fields) -> SamplingParams:
    stop = f.get("stop", (str, list), [])
    if isinstance(stop, str):
        stop = [stop]
    if len(stop) > 16 or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", "'stop' must be a non-empty string or a list of up to 16 such strings")
    for s in stop:
        _check_text(s, "stop")
    stop_ids = f.get("stop_token_ids", (list,), [])
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise invalid("stop_token_ids", "'stop_token_ids' must be a list of integers")
    seed = f.integer("seed", None, -(2**63), 2**64 - 1)
    top_k = f.integer("top_k", 0, -1, MAX_TOP_K)
    return SamplingParams(
        temperature=f.number("temperature", 1.0, 0.0, 2.0),
        top_p=f.number("top_p", 1.0, 1e-9, 1.0),
        top_k=0 if top_k == -1 else top_k,
        min_p=f.number("min_p", 0.0, 0.0, 1.0),
        seed=seed,
        repetition_penalty=f.number("repetition_penalty", 1.0, 1e-6, 10.0),
        frequency_penalty=f.number("frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=f.number("presence_penalty", 0.0, -2.0, 2.0),
        stop=list(stop),
        stop_token_ids=list(stop_ids),
        ignore_eos=f.get("ignore_eos", (bool,), False),
    )


def _schema_text(value: Any, param: str) -> str:
    """A JSON schema given as an object (or as its JSON text), as compact JSON text (the
    grammar cache's key; key order is kept: properties are generated in it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise invalid(param, f"'{param}' is not valid JSON") from None
    if not isinstance(value, (dict, bool)):
        raise invalid(param, f"'{param}' must be a JSON schema (an object)")
    return json.dumps(value, separators=(",", ":"))


def _choice_text(value: Any, param: str) -> str:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise invalid(param, f"'{param}' must be a non-empty list of non-empty strings")
    return json.dumps(value)


def _regex_text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(param, f"'{param}' must be a non-empty string (a regular expression)")
    return value


def _response_format(value: Any) -> StructuredOutput | None:
    """OpenAI's `response_format`: text, json_object, or json_schema {name, schema, strict}."""
    if not isinstance(value, dict):
        raise invalid("response_format", "'response_format' must be an object with a 'type'")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise invalid("response_format.json_schema", "'response_format.json_schema' must be an object with a 'schema'")
        strict = spec.get("strict") or False
        if not isinstance(strict, bool):
            raise invalid("response_format.json_schema.strict", "'strict' must be a boolean")
        return StructuredOutput("json_schema", _schema_text(spec["schema"], "response_format.json_schema.schema"), strict)
    raise invalid("response_format.type", f"'response_format.type' must be text, json_object or json_schema, got {kind!r}")


# vLLM's extras: `structured_outputs: {json|regex|choice|grammar|json_object}` and the older
# top-level `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`.
_GUIDED = {
    "json": lambda v, p: StructuredOutput("json_schema", _schema_text(v, p)),
    "regex": lambda v, p: StructuredOutput("regex", _regex_text(v, p)),
    "choice": lambda v, p: StructuredOutput("choice", _choice_text(v, p)),
    "grammar": lambda v, p: StructuredOutput("lark", _regex_text(v, p)),
}


def _constrained(f: _Fields, gen: GenerationRequest) -> GenerationRequest:
    """`gen` with the output constraint the request asks for, from whichever field it uses
    (at most one)."""
    found: list[tuple[str, StructuredOutput | None]] = []
    if f.body.get("response_format") is not None:
        found.append(("response_format", _response_format(f.body["response_format"])))
    options = f.get("structured_outputs", (dict,), None)
    if options is not None:
        for key, value in options.items():
            param = f"structured_outputs.{key}"
            if value is None or value is False:
                continue
            if key == "json_object":
                found.append((param, StructuredOutput("json_object")))
            elif key in _GUIDED:
                found.append((param, _GUIDED[key](value, param)))
            else:
                raise invalid(param, f"unknown structured output {key!r} (known: json, regex, choice, grammar, json_object)")
    for key, make in _GUIDED.items():
        value = f.body.get(f"guided_{key}")
        if value is not None:
            found.append((f"guided_{key}", make(value, f"guided_{key}")))
    found = [(p, c) for p, c in found if c is not None]
    if len(found) > 1:
        raise invalid(found[1][0], f"only one output constraint per request ({', '.join(p for p, _ in found)} given)")
    if found:
        gen.constraint_param, gen.params.structured_output = found[0]
    return gen


def _common(f: _Fields) -> dict[str, Any]:
    model = f.get("model", (str,), None)
    if model is None:
        raise invalid("model", "'model' is required")
    stream = f.get("stream", (bool,), False)
    options = f.get("stream_options", (dict,), {})
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("stream_options", "'stream_options.include_usage' must be a boolean")
    return dict(
        model=model,
        n=f.integer("n", 1, 1, 16),
        stream=stream,
        include_usage=include_usage,
        return_token_ids=f.get("return_token_ids", (bool,), False),
    )


@dataclass(frozen=True)
class ImagePart:
    """An image a chat message names: its URL and the request field it came from."""

    url: str
    param: str  # e.g. messages[0].content[1].image_url, for error bodies


IMAGE_DETAILS = ("auto", "low", "high")


def _image_part(part: dict[str, Any], param: str) -> ImagePart:
    """An `image_url` content part: `{"image_url": {"url": ..., "detail": ...}}`, or the
    URL as a plain string (vLLM accepts that form too)."""
    value = part.get("image_url")
    if isinstance(value, dict):
        url = value.get("url")
        detail = value.get("detail")
        if detail is not None and detail not in IMAGE_DETAILS:
            raise invalid(f"{param}.image_url.detail", f"'detail' must be one of {', '.join(IMAGE_DETAILS)}, got {detail!r}")
    else:
        url = value
    if not isinstance(url, str) or not url:
        raise invalid(f"{param}.image_url", "an image_url part needs 'image_url': {'url': '...'} (a data URL or an http(s) URL)")
    return ImagePart(url, f"{param}.image_url")


def _message_content(message: dict[str, Any], index: int, images: list[ImagePart]) -> str | list[dict[str, Any]]:
    """A message's content: a string, or (when it holds images) a list of text and
    `{"type": "image"}` parts in order; the images' URLs are appended to `images`."""
    content = message.get("content")
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        _check_text(content, param)
        return content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                _check_text(part["text"], param)
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if message.get("role") != "user":
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
    raise invalid(param, "content must be a string or a list of content parts")


# The efforts gpt-oss's chat template knows (OpenAI's reasoning models take the same names).
REASONING_EFFORTS = ("low", "medium", "high")


def parse_chat_request(body: Any) -> GenerationRequest:
    """Validates a /v1/chat/completions body."""
    f = _Fields(body)
    common = _common(f)
    messages = f.get("messages", (list,), None)
    if not messages:
        raise invalid("messages", "'messages' must be a non-empty array")
    parsed = []
    images: list[ImagePart] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", "each message must be an object")
        role = message.get("role")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise invalid(f"messages[{i}].role", f"unknown role {role!r}")
        entry = {"role": "system" if role == "developer" else role, "content": _message_content(message, i, images)}
        if role == "assistant" and message.get("tool_calls"):
            entry["tool_calls"] = _message_tool_calls(message["tool_calls"], i)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise invalid(f"messages[{i}].tool_call_id", "a tool message needs its 'tool_call_id' (a string)")
            entry["tool_call_id"] = call_id
        parsed.append(entry)
    max_tokens = f.integer("max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = f.integer("max_tokens", None, 1)
    want_logprobs = f.get("logprobs", (bool,), False)
    top = f.integer("top_logprobs", None, 0, 20)
    if top is not None and not want_logprobs:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    effort = f.get("reasoning_effort", (str,), None)
    if effort is not None and effort not in REASONING_EFFORTS:
        raise invalid("reasoning_effort", f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}")
    tools, tool_choice, parallel = _tools(f)
    gen = GenerationRequest(
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        reasoning_effort=effort,
        chat_messages=parsed,
        images=images,
        prompts=[],
        params=_sampling(f),
        max_tokens=max_tokens,
        echo=False,
        logprobs=(top or 0) if want_logprobs else None,
        **common,
    )
    return _constrained(f, gen)


_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _tools(f: _Fields) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any], bool]:
    """`tools`, `tool_choice` (default: auto with tools, none without) and
    `parallel_tool_calls`, validated."""
    tools = f.get("tools", (list,), None)
    if tools is not None:
        for i, tool in enumerate(tools):
            path = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise invalid(path, f"'{path}' must be an object with 'type': 'function'")
            function = tool.get("function")
            if not isinstance(function, dict):
                raise invalid(f"{path}.function", f"'{path}.function' must be an object")
            name = function.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise invalid(f"{path}.function.name", "a function name is 1 to 64 letters, digits, '_' or '-'")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise invalid(f"{path}.function.parameters", "'parameters' must be a JSON schema (an object)")
            description = function.get("description")
            if description is not None and not isinstance(description, str):
                raise invalid(f"{path}.function.description", "'description' must be a string")
        tools = [{"type": "function", "function": t["function"]} for t in tools] or None
    choice = f.body.get("tool_choice")
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise invalid("tool_choice", "a named 'tool_choice' is {'type': 'function', 'function': {'name': ...}}")
        if not any(t["function"]["name"] == name for t in tools or []):
            raise invalid("tool_choice", f"'tool_choice' names {name!r}, which is not in 'tools'")
        choice = {"type": "function", "function": {"name": name}}
    elif choice not in ("none", "auto", "required"):
        raise invalid("tool_choice", "'tool_choice' must be none, auto, required or a named function")
    elif choice != "none" and not tools:
        raise invalid("tool_choice", f"'tool_choice': {choice!r} needs 'tools'")
    parallel = f.get("parallel_tool_calls", (bool,), True)
    return tools, choice, parallel


def _message_tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, their arguments parsed (chat templates want
    objects)."""
    path = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise invalid(path, f"'{path}' must be an array")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"{path}[{j}]", "a tool call is {'id', 'type': 'function', 'function': {'name', 'arguments'}}")
        args = function.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise invalid(f"{path}[{j}].function.arguments", "'arguments' must be JSON text") from None
        out.append({"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": args}})
    return out


def _prompts(value: Any) -> list[str | list[int]]:
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(value, str):
        _check_text(value, "prompt")
        return [value]
    if is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        for p in value:
            _check_text(p, "prompt")
        return list(value)
    if isinstance(value, list) and value and all(is_ids(p) for p in value):
        return list(value)
    raise invalid(
        "prompt",
        "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
    )


def parse_completion_request(body: Any) -> GenerationRequest:
    """Validates a /v1/completions body."""
    f = _Fields(body)
    common = _common(f)
    if "prompt" not in f.body:
        raise invalid("prompt", "'prompt' is required")
    prompts = _prompts(f.body["prompt"])
    if len(prompts) > 256:
        raise invalid("prompt", "at most 256 prompts per request")
    echo = f.get("echo", (bool,), False)
    max_tokens = f.integer("max_completion_tokens", None, 0)  # the newer name
    if max_tokens is None:
        max_tokens = f.integer("max_tokens", 16, 0)
    if max_tokens == 0 and not echo:
        raise invalid("max_tokens", "'max_tokens' may be 0 only with 'echo': true")
    gen = GenerationRequest(
        chat_messages=None,
        prompts=prompts,
        params=_sampling(f),
        max_tokens=max_tokens,
        echo=echo,
        logprobs=f.integer("logprobs", None, 0, 20),
        **common,
    )
    return _constrained(f, gen)
