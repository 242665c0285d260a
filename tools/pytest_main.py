"""Entry point of every modular_py_test: runs pytest on the files named in argv.

Bazel starts a py_test in its runfiles tree with the test files as relative paths; pytest
then collects them as usual. Exit codes pass through (0 pass, 1 failures, 5 nothing ran is
turned into a failure so an empty test cannot pass).
"""

import os
import sys

import pytest


def _interpret_triton_without_gpu() -> None:
    """Without a GPU, Triton kernels can only run in Triton's CPU interpreter; the switch is
    read when a kernel is defined, so it is set before pytest imports any package."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def main() -> int:
    """Runs pytest over the given test files and returns its exit code."""
    args = sys.argv[1:]
    _interpret_triton_without_gpu()
    # Bazel gives each test a private temp dir: tmp_path fixtures live there.
    basetemp = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "pytest")
    code = pytest.main(["-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *args])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("pytest collected no tests: failing so that an empty test cannot pass")
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
