"""`generate` on a folder holding only config.json (`--load-format dummy`): token ids in and
out without a tokenizer, text with another model's tokenizer, and one clear error line
for each missing or conflicting flag."""

import pytest

from max.testing.cli import run_cli
from max.testing.tiny_checkpoints import llama_config, write_config_only


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_config_only(tmp_path_factory.mktemp("cfg") / "tiny", llama_config()))


def _generate(model_dir, *flags):
    return run_cli("generate", "--model-path", model_dir, "--load-format", "dummy", "--max-new-tokens", "4", *flags)


def _error_line(result):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_token_ids_in_token_ids_out(model_dir):
    result = _generate(model_dir, "--skip-tokenizer-init", "--prompt-token-ids", "1", "2", "3", "--ignore-eos")
    assert result.returncode == 0, result.stderr
    ids = [int(t) for t in result.stdout.split()]
    assert len(ids) == 4 and all(0 <= t < 49152 for t in ids)


def test_borrowed_tokenizer_gives_text(model_dir):
    result = _generate(model_dir, "--tokenizer", "smollm2-135m", "--prompt", "Hello", "--ignore-eos")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    by_ids = _generate(model_dir, "--tokenizer", "smollm2-135m", "--prompt-token-ids", "1", "2", "--ignore-eos")
    assert by_ids.returncode == 0, by_ids.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--prompt", "Hello"), "--skip-tokenizer-init to run without one"),
        (("--skip-tokenizer-init", "--prompt", "Hello"), "give the prompt as --prompt-token-ids"),
        (("--skip-tokenizer-init",), "give either --prompt TEXT or --prompt-token-ids"),
        (("--skip-tokenizer-init", "--tokenizer", "smollm2-135m", "--prompt-token-ids", "1"), "exclude each other"),
        (("--tokenizer", "no/such-tokenizer", "--prompt", "x"), "is not a local folder"),
    ],
)
def test_clear_errors(model_dir, flags, message):
    line = _error_line(_generate(model_dir, *flags))
    assert message in line
    if "run without one" in message:
        assert "--tokenizer PATH_OR_REPO" in line


def test_config_only_without_dummy_is_refused(model_dir):
    line = _error_line(run_cli("generate", "--model-path", model_dir, "--skip-tokenizer-init", "--prompt-token-ids", "1"))
    assert "holds no weights" in line and "--load-format dummy" in line
