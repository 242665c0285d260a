"""Output constraints of a generation request: which grammar its output must follow.

A request names at most one, in any of three shapes: OpenAI's `response_format` (text,
json_object, or json_schema {name, schema, strict}), vLLM's `structured_outputs` ({json |
regex | choice | grammar | json_object}), or vLLM's older top-level `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar`. Here they become one `StructuredOutput`
and the field it came from (errors about it, such as a schema the grammar engine cannot
compile, name that field).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.serve.api_errors import invalid
from max.serve.request_body import AsSent, RequestBody


class JsonSchemaFormat(RequestBody):
    """`response_format.json_schema`: the schema the output follows."""

    name: str | None = None
    description: str | None = None
    schema_: Annotated[dict[str, Any] | bool | None, AsSent] = Field(default=None, alias="schema")
    strict: Annotated[bool | None, AsSent] = None


class ResponseFormat(RequestBody):
    """OpenAI's `response_format`."""

    type: str = Field(description="text, json_object or json_schema")
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(RequestBody):
    """vLLM's structured outputs: one of these."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = Field(default=None, description="a Lark grammar")
    json_object: Annotated[bool | None, AsSent] = None

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


def _response_format(value: ResponseFormat) -> StructuredOutput | None:
    """OpenAI's `response_format`: text, json_object, or json_schema {name, schema, strict}."""
    kind = value.type
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind == "json_schema":
        spec = value.json_schema
        if spec is None or not spec.sent("schema"):
            raise invalid("response_format.json_schema", "'response_format.json_schema' must be an object with a 'schema'")
        strict = spec.strict or False
        if not isinstance(strict, bool):
            raise invalid("response_format.json_schema.strict", "'strict' must be a boolean")
        return StructuredOutput("json_schema", _schema_text(spec.schema_, "response_format.json_schema.schema"), strict)
    raise invalid("response_format.type", f"'response_format.type' must be text, json_object or json_schema, got {kind!r}")


# vLLM's shapes: `structured_outputs.<key>` and the older top-level `guided_<key>`.
_GUIDED: dict[str, Callable[[Any, str], StructuredOutput]] = {
    "json": lambda v, p: StructuredOutput("json_schema", _schema_text(v, p)),
    "regex": lambda v, p: StructuredOutput("regex", _regex_text(v, p)),
    "choice": lambda v, p: StructuredOutput("choice", _choice_text(v, p)),
    "grammar": lambda v, p: StructuredOutput("lark", _regex_text(v, p)),
}


def output_constraint(
    response_format: ResponseFormat | None,
    structured_outputs: StructuredOutputs | None,
    guided: dict[str, Any],
) -> tuple[str, StructuredOutput] | None:
    """The request's one output constraint and the field that set it (None: free output);
    a 400 naming the field of a malformed one, or the second of several.

    `guided` holds the request's `guided_<key>` values by key (json, regex, choice, grammar).
    """
    found: list[tuple[str, StructuredOutput | None]] = []
    if response_format is not None:
        found.append(("response_format", _response_format(response_format)))
    if structured_outputs is not None:
        for key, value in structured_outputs.as_sent().items():
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
        value = guided.get(key)
        if value is not None:
            found.append((f"guided_{key}", make(value, f"guided_{key}")))
    found = [(p, c) for p, c in found if c is not None]
    if len(found) > 1:
        raise invalid(found[1][0], f"only one output constraint per request ({', '.join(p for p, _ in found)} given)")
    return found[0] if found else None
