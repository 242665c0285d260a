"""Shared command-line plumbing of the verification tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from max.entrypoints.process_setup import run_main


class UsageErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with status 1 (2 means "accuracy failure")."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1)


def run_tool(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Runs a verification tool's main through the common process set-up
    (`max.entrypoints.process_setup`), offline by default: verification reproduces runs
    from the local cache."""
    return run_main(main, argv, hub_offline=True)
