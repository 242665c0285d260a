"""Checks of a request field's JSON kind and range, with errors that name the field.

The request models' schema (request_body.py) lets through what pydantic would convert
(`"5"` or `true` for a number, `1` for a boolean) and keeps the value as the client sent
it; the rules of each request then take only what JSON itself calls a number, an integer
or a boolean, through these checks, and answer anything else with a 400 that says which
field is wrong and why.
"""

from __future__ import annotations

from typing import Any

from max.serve.api_errors import invalid

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array", dict: "an object"}


def _kind_names(kinds: tuple[type, ...]) -> str:
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def of_kind(value: Any, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """`value` if it is one of `kinds` (None: `default`); else a 400 naming `name`."""
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) and bool not in kinds:
        raise invalid(name, f"'{name}' must be {_kind_names(kinds)}, not a boolean")
    if not isinstance(value, kinds):
        raise invalid(name, f"'{name}' must be {_kind_names(kinds)}, got {type(value).__name__}")
    return value


def number(value: Any, name: str, default: float, low: float, high: float) -> float:
    """A number within [low, high] (None: `default`)."""
    result = float(of_kind(value, name, (int, float), default))
    if not low <= result <= high:
        raise invalid(name, f"'{name}' must be between {low} and {high}, got {result}")
    return result


def integer(value: Any, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    """An integer of at least `low` (and at most `high`); None: `default`."""
    result = of_kind(value, name, (int,), default)
    if result is None:
        return None
    if result < low or (high is not None and result > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(name, f"'{name}' must be {bound}, got {result}")
    return result


def boolean(value: Any, name: str, default: bool) -> bool:
    """A boolean (None: `default`)."""
    return of_kind(value, name, (bool,), default)


def check_text(text: str, param: str) -> None:
    """Refuses text that is not valid Unicode: JSON's \\ud800 escapes decode to unpaired
    surrogates, which no tokenizer (and no UTF-8 output) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise invalid(param, f"'{param}' holds an unpaired surrogate (\\u{ord(bad):04x}), which is not valid text") from None


def is_token_ids(value: Any) -> bool:
    """A non-empty list of integers (booleans are not token ids)."""
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
