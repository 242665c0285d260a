"""Command-line flags generated from a config dataclass: each field says its own flag.

A field declared with `setting(default, "--flag", help=...)` carries a `Flag` in its
metadata: the option strings, the help text, and how argparse reads it (a type, choices,
an action, a parser such as `parse_memory`, a default for the command line that differs
from the library's). `add_flags` adds one argument per such field to a parser, grouped by
the flag's group; `from_args` builds the dataclass back from the parsed namespace. A new
setting is thus one field, never three edits that can drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from max.errors import MaxError

_MISSING = object()


@dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line."""

    names: tuple[str, ...]
    help: str
    group: str = "engine"
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    action: str | type[argparse.Action] | None = None
    metavar: str | None = None
    nargs: str | None = None
    # Turns the flag's text into the field's value after parsing (e.g. "2GiB" -> bytes).
    parse: Callable[[Any], Any] | None = None
    # The command line's default when it is not the field's (e.g. `auto` encodings).
    cli_default: Any = _MISSING


def setting(default: Any, *names: str, default_factory: Any = dataclasses.MISSING, **flag: Any):
    """A dataclass field of `default` (ignored when a `default_factory` is given) whose flag
    is `names` (none: no flag), with `Flag`'s other fields as keywords."""
    metadata = {"flag": Flag(tuple(names), **flag)} if names else {}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flags_of(cls: type) -> list[tuple[dataclasses.Field, Flag]]:
    """The fields of dataclass `cls` that have a flag, in declaration order."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata]


def add_flags(parser: argparse.ArgumentParser, cls: type, groups: Sequence[str] | None = None) -> None:
    """Adds the flags of dataclass `cls` (those of `groups` only, if given) to `parser`."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for f, flag in flags_of(cls):
        if groups is not None and flag.group not in groups:
            continue
        section = sections.get(flag.group)
        if section is None:
            section = sections[flag.group] = parser.add_argument_group(flag.group)
        default = flag.cli_default
        if default is _MISSING:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"dest": f.name, "help": flag.help, "default": default}
        for name in ("type", "choices", "action", "metavar", "nargs"):
            value = getattr(flag, name)
            if value is not None:
                kwargs[name] = value
        section.add_argument(*flag.names, **kwargs)


def from_args(cls: type, args: argparse.Namespace, **extra: Any):
    """An instance of dataclass `cls` from the flags `add_flags` added (and `extra`
    fields); fields whose flag was not added keep their defaults."""
    values: dict[str, Any] = {}
    for f, flag in flags_of(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if isinstance(value, list):
            value = list(value)
        values[f.name] = flag.parse(value) if flag.parse is not None and value is not None else value
    return cls(**values, **extra)


def parse_json_object(value: str | Mapping[str, Any], flag: str, example: str) -> Mapping[str, Any]:
    """The value of a flag that takes a JSON object (`--hf-overrides`,
    `--speculative-config`), from its JSON text or a mapping already built; MaxError naming
    the flag, with `example`, for text that is not JSON or not an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise MaxError(f"{flag}: not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, Mapping):
        raise MaxError(f"{flag}: expected a JSON object such as {example} (got {value!r})")
    return value
