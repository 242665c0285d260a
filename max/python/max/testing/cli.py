"""Running the project's commands in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(extra or {})}


def run_cli(*args: str, cwd: str | None = None, env_extra: dict | None = None, timeout: float = 600):
    """`python -m max.entrypoints.pipelines ARGS`, with this interpreter's import path."""
    return subprocess.run(
        [sys.executable, "-m", "max.entrypoints.pipelines", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(env_extra),
        timeout=timeout,
    )


def run_script(script: Path | str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (the verification tools), with this interpreter's import path."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )
