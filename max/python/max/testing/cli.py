"""Running the `pipelines` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, cwd: str | None = None, env_extra: dict | None = None, timeout: float = 600):
    """`python -m max.entrypoints.pipelines ARGS`, with this interpreter's import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "max.entrypoints.pipelines", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
