"""Shared command-line plumbing of the verification tools."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from max.errors import MaxError


class UsageErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with status 1 (2 means "accuracy failure")."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1)


def run_tool(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Runs a tool's main: paths relative to the caller's directory, MaxError -> exit 1."""
    cwd = os.environ.get("BUILD_WORKING_DIRECTORY")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return main(argv)
    except MaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
