"""The plumbing the benchmark tools' `main` functions share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from max.errors import MaxError


def run_command(run: Callable[..., int], *args) -> int:
    """Runs `run(*args)` as a command: paths are relative to the caller's shell (`bazel run`
    starts in the runfiles tree), and a MaxError is one line on stderr and exit status 1."""
    cwd = os.environ.get("BUILD_WORKING_DIRECTORY")
    if cwd:
        os.chdir(cwd)
    try:
        return run(*args)
    except MaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
