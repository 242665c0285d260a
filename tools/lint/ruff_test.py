"""Runs `ruff check` over the repository with the configuration in ruff.toml."""

import os
import subprocess
import sys
from pathlib import Path


def workspace_root() -> Path:
    """The real source tree: ruff.toml in the runfiles links back to it."""
    config = Path("ruff.toml")
    return config.resolve().parent


def test_ruff_is_clean() -> None:
    root = workspace_root()
    ruff = Path(sys.executable).parent / "ruff"
    assert (root / "max").is_dir(), f"could not locate the source tree (got {root})"
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "--config", str(root / "ruff.toml"), str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
