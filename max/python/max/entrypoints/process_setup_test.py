"""The process set-up every command shares: working directory, environment defaults, and
the exit status of errors."""

import logging
import os

import pytest

from max.entrypoints.process_setup import run_main
from max.errors import MaxError


@pytest.fixture
def clean_process(monkeypatch, tmp_path):
    """Restores the working directory and the variables the set-up may set."""
    monkeypatch.chdir(tmp_path)
    for name in ("BUILD_WORKING_DIRECTORY", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_runs_in_the_callers_directory_under_bazel_run(clean_process, tmp_path):
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    clean_process.setenv("BUILD_WORKING_DIRECTORY", str(user_dir))
    seen = []
    assert run_main(lambda: seen.append(os.getcwd())) == 0
    assert seen == [str(user_dir)]


def test_a_missing_build_working_directory_is_ignored(clean_process, tmp_path):
    clean_process.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path / "gone"))
    assert run_main(lambda: 0) == 0
    assert os.getcwd() == str(tmp_path)


def test_environment_defaults_and_explicit_settings(clean_process):
    run_main(lambda: 0)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert "HF_HUB_OFFLINE" not in os.environ  # online unless the tool asks
    run_main(lambda: 0, hub_offline=True)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    clean_process.setenv("HF_HUB_OFFLINE", "0")
    clean_process.setenv("TOKENIZERS_PARALLELISM", "true")
    run_main(lambda: 0, hub_offline=True)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["TOKENIZERS_PARALLELISM"] == "true"


def _raise(error: BaseException):
    raise error


@pytest.mark.parametrize(
    "error,status",
    [(MaxError("no such model"), 1), (KeyboardInterrupt(), 130), (BrokenPipeError(), 0)],
    ids=["input_error", "ctrl_c", "closed_pipe"],
)
def test_exit_status_of_errors(clean_process, capsys, error, status):
    assert run_main(_raise, error) == status
    err = capsys.readouterr().err
    if isinstance(error, MaxError):
        assert err.strip() == "error: no such model"
    else:
        assert "error:" not in err


def test_main_s_status_and_arguments_pass_through(clean_process):
    assert run_main(lambda a, b: a + b, 1, 1) == 2  # verify's "accuracy failure"
    assert run_main(lambda: None) == 0


def test_other_exceptions_keep_their_traceback(clean_process):
    with pytest.raises(ValueError):
        run_main(_raise, ValueError("a bug"))


def test_log_level_is_the_tool_s_choice(clean_process):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()  # basicConfig configures only a root logger without handlers
    try:
        run_main(lambda: 0, log_level=logging.INFO)
        assert root.level == logging.INFO
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
