"""Flags that every tool spells the same way: where its results go, and the server's API key.

- `--result-file PATH`: the tool's results as JSON (`--json PATH` is its deprecated old
  name in the tools that had it).
- `--api-key KEY` for tools that talk to a server: the key sent as `Authorization: Bearer`;
  by default the one `serve` itself reads (MAX_SERVE_API_KEY), else the one OpenAI clients
  read (OPENAI_API_KEY), so a key exported for either side works for both.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# `serve --api-key` defaults to this variable (max.serve.server_args.API_KEY_ENV).
SERVER_API_KEY_ENV = "MAX_SERVE_API_KEY"
# What the OpenAI client libraries read.
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"


def default_api_key() -> str | None:
    """The API key from the environment: MAX_SERVE_API_KEY, else OPENAI_API_KEY."""
    return os.environ.get(SERVER_API_KEY_ENV) or os.environ.get(OPENAI_API_KEY_ENV) or None


def add_api_key_arg(parser: argparse.ArgumentParser | Any, help: str = "sent as the Bearer token") -> None:
    """`--api-key`, defaulting to `default_api_key()`; `parser` may be an argument group."""
    parser.add_argument(
        "--api-key",
        default=default_api_key(),
        help=f"{help} (default: ${SERVER_API_KEY_ENV}, else ${OPENAI_API_KEY_ENV})",
    )


class _DeprecatedAlias(argparse.Action):
    """Stores like the flag it stands for, with a warning naming that flag."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_result_file_arg(
    parser: argparse.ArgumentParser | Any,
    help: str = "write the results here as JSON",
    *,
    json_alias: bool = False,
) -> None:
    """`--result-file PATH` (dest `result_file`); with `json_alias`, also the deprecated
    `--json PATH` of the tools that used to spell it so. `parser` may be an argument group."""
    parser.add_argument("--result-file", metavar="PATH", help=help)
    if json_alias:
        parser.add_argument(
            "--json",
            dest="result_file",
            metavar="PATH",
            action=_DeprecatedAlias,
            replacement="--result-file",
            help=argparse.SUPPRESS,
        )
