"""The base of every request body model: one validation, with errors that name the field.

A body is validated once, by `RequestBody.from_json`, in two passes over the same model:
1. the schema: pydantic checks each field's type and shape; a wrong one is a 400 naming the
   field's path (e.g. `messages[0].content`). Fields the models do not know are accepted
   and ignored, as OpenAI does.
2. the rules: each request's `_check` takes the values that passed (ranges, the rules
   between fields, what JSON itself calls a number or a boolean: json_kinds.py), answers
   what breaks them with a 400 naming the field, and leaves each field it checks holding
   its checked value (defaults filled in); what the request derives (a chat's conversation,
   a completion's prompts) it keeps beside them, for the handler and the engine request.
Every error the schema finds comes before any the rules find; the rules run in the order
the server has always checked them, so that a body with several faults is always answered
with the same one.

A field marked `AsSent` is type-checked by the schema but keeps the value the client sent,
so that the rules can refuse what pydantic would have converted (`true` or `"5"` for a
number) with their own message. Every model also remembers which keys the client sent,
in the client's order: some rules tell a key sent as null from one left out, and some
errors name whichever of several keys came first.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from max.serve.api_errors import ApiError


def _keep_as_sent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    handler(value)  # the schema's type check, and its error
    return value


# Marks a field whose value stays as the client sent it (see the module docstring).
AsSent = WrapValidator(_keep_as_sent)


class RequestBody(BaseModel):
    """A JSON object of a request: validated by the schema, then by `_check`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    _sent_keys: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        body = handler(data)
        if isinstance(data, dict):
            body._sent_keys = tuple(data)
        # Runs once every field of the whole body passed the schema (a nested object's
        # `_check` does nothing: its rules are its request's, applied in their order).
        body._check()
        return body

    def _check(self) -> None:
        """The rules between fields (a request overrides this); raises ApiError."""

    def sent(self, key: str) -> bool:
        """Whether the client sent `key` (even as null)."""
        return key in self._sent_keys

    @property
    def sent_keys(self) -> tuple[str, ...]:
        """The keys the client sent, in its order."""
        return self._sent_keys

    def as_sent(self) -> dict[str, Any]:
        """The object with the keys the client sent, in its order (unknown ones too), each
        with its value (as sent, for an `AsSent` field or a key the models do not know)."""
        names = {(info.alias or name): name for name, info in type(self).model_fields.items()}
        extra = self.model_extra or {}
        out = {}
        for key in self._sent_keys:
            if key in extra:
                out[key] = extra[key]
            else:  # a field, sent by its alias or by its own name
                out[key] = getattr(self, names.get(key, key))
        return out

    @classmethod
    def from_json(cls, body: Any) -> Self:
        """`body` (parsed JSON) validated as this request; a 400 naming the field that is wrong."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            return cls.model_validate(body)
        except ValidationError as e:
            raise schema_error(e) from None


# pydantic's names for the members of a union, which are not part of the field's path (a
# model member is named by its class, or by the validator that wraps it: `_validate`).
# Known quirk, kept because clients see it: matching by prefix also drops field names that
# begin with a tag ("stream", "stream_options", "structured_outputs", "strict"), so a schema
# error in one of them names no field (param null).
_UNION_TAGS = ("str", "int", "float", "bool", "dict", "list", "function-after", "function-wrap", "literal")


def _path(loc: tuple[Any, ...]) -> str:
    """`messages[0].content` from pydantic's location (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif any(part.startswith(tag) for tag in _UNION_TAGS) or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def schema_error(error: ValidationError) -> ApiError:
    """The 400 that names the first field of a body whose type is wrong."""
    errors = error.errors(include_url=False)
    # Of a union's alternatives, the one that got furthest names the field best.
    first = max(errors, key=lambda err: _path(err["loc"]).count(".") + _path(err["loc"]).count("["))
    path = _path(first["loc"]) or None
    missing = first["type"] == "missing"
    message = f"'{path}' is required" if missing else f"'{path}': {first['msg']}"
    return ApiError(400, message, param=path, code="invalid_parameter")

