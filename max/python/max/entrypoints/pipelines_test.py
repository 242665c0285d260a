"""The `pipelines` command end to end, as a user runs it: help, list, generate, and one
clear error line (no traceback) for each kind of bad input."""

from pathlib import Path

import pytest

from max.testing.cli import run_cli
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint


def assert_one_error_line(result, pattern):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert pattern in errors[0], errors[0]


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("list", "generate", "serve"):
        assert command in result.stdout


def test_list_prints_architectures():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    assert "LlamaForCausalLM" in result.stdout
    assert "smollm2-135m" in result.stdout


def test_bad_flag_is_a_usage_error():
    result = run_cli("generate", "--prompt", "x", "--max-batch-size", "lots")
    assert result.returncode == 2
    assert "invalid int value" in result.stderr


def test_generate_with_the_embedded_default_answers():
    result = run_cli("generate", "--prompt", "What is the capital of France?", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_missing_folder(tmp_path):
    assert_one_error_line(
        run_cli("generate", "--model-path", str(tmp_path / "missing"), "--prompt", "x"), "does not exist"
    )


def test_relative_paths_resolve_against_the_callers_directory(tmp_path):
    """Under `bazel run` the process starts elsewhere; BUILD_WORKING_DIRECTORY is the user's."""
    result = run_cli(
        "generate",
        "--model-path",
        "missing-model",
        "--prompt",
        "x",
        env_extra={"BUILD_WORKING_DIRECTORY": str(tmp_path)},
    )
    assert_one_error_line(result, "'missing-model' does not exist")
    write_tiny_checkpoint(tmp_path / "tiny", llama_config(), with_tokenizer=True)
    result = run_cli(
        "generate",
        "--model-path",
        "tiny",
        "--prompt",
        "hello",
        "--max-new-tokens",
        "3",
        "--no-chat-template",
        cwd="/",
        env_extra={"BUILD_WORKING_DIRECTORY": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr


# Every architecture the tree registers (the message lists them all, sorted).
REGISTERED = [
    "DeepseekV2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "GptOssForCausalLM",
    "LlamaForCausalLM", "MistralForCausalLM", "Olmo2ForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
]  # fmt: skip


def test_unknown_architecture(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", llama_config(architectures=["FooForCausalLM"]))
    assert_one_error_line(
        run_cli("generate", "--model-path", str(path), "--prompt", "x"),
        "architecture 'FooForCausalLM' is not supported; supported architectures: "
        + ", ".join(sorted(REGISTERED)),
    )


def test_truncated_safetensors(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", llama_config(), with_tokenizer=True)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_one_error_line(
        run_cli("generate", "--model-path", str(path), "--prompt", "x"), str(weights)
    )


def test_truncated_gguf(tmp_path):
    from max.pipelines.lib.hub.embedded_models import DEFAULT_MODEL

    data = Path(DEFAULT_MODEL.path()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    assert_one_error_line(run_cli("generate", "--model-path", str(cut), "--prompt", "x"), "is truncated: tensor")


def test_prompt_longer_than_max_length():
    result = run_cli("generate", "--prompt", "word " * 100, "--max-length", "32")
    assert_one_error_line(result, "maximum length is 32")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--devices", "tpu"], "unknown device 'tpu'"),
        (["--kv-cache-memory", "lots"], "cannot read memory size"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
    ],
)
def test_bad_settings(args, message):
    assert_one_error_line(run_cli("generate", "--prompt", "x", *args), message)
