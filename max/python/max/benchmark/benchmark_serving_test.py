"""benchmark_serving end to end against a real `serve` of a tiny config-only model with
random weights: started by the benchmark itself without a tokenizer, and at --base-url
with Poisson arrivals, a concurrency limit, the chat endpoint and ShareGPT prompts."""

import json

import pytest

from max.benchmark import benchmark_serving
from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_config_only

SERVE_FLAGS = ["--load-format", "dummy", "--max-length", "128", "--kv-cache-page-size", "8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_config_only(tmp_path_factory.mktemp("cfg") / "tiny", llama_config()))


@pytest.fixture(scope="module")
def server(model_dir):
    """The same model with a borrowed tokenizer, for text prompts."""
    with ServerProcess("--model-path", model_dir, "--tokenizer", "smollm2-135m", *SERVE_FLAGS) as srv:
        yield srv


def _run(tmp_path, *flags):
    out = tmp_path / "result.json"
    code = benchmark_serving.main([*flags, "--result-file", str(out), "--disable-tqdm"])
    assert code == 0
    return json.loads(out.read_text())


def test_starts_serve_without_a_tokenizer(tmp_path, model_dir, capsys):
    result = _run(
        tmp_path, "--model-path", model_dir, *SERVE_FLAGS, "--skip-tokenizer-init",
        "--num-prompts", "6", "--random-input-len", "12", "--random-output-len", "5", "--max-concurrency", "3",
    )
    assert (result["completed"], result["failed"]) == (6, 0)
    assert result["total_input_tokens"] == 6 * 12
    assert result["total_output_tokens"] == 6 * 5  # EOS ignored: exactly the asked length
    assert "--skip-tokenizer-init" in result["serve_args"]
    assert 0 < result["mean_ttft_ms"] <= result["mean_e2el_ms"]
    assert result["mean_tpot_ms"] > 0 and result["p99_itl_ms"] > 0
    report = capsys.readouterr().out
    assert "Successful requests:" in report and "Mean TPOT (ms):" in report


def test_poisson_arrivals_at_a_running_server(tmp_path, server):
    result = _run(
        tmp_path, "--base-url", server.url, "--num-prompts", "8", "--random-input-len", "10",
        "--random-output-len", "4", "--random-range-ratio", "0.5", "--request-rate", "40",
        "--max-concurrency", "2", "--random-vocab-size", "49152", "--save-detailed", "--seed", "3",
    )
    assert (result["completed"], result["failed"]) == (8, 0)
    assert result["request_rate"] == 40.0 and result["max_concurrency"] == 2
    per_request = result["requests"]
    assert sum(r["output_tokens"] for r in per_request) == result["total_output_tokens"]
    # One chunk per token, or fewer when the server's stream fell behind and merged some.
    assert all(0 <= len(r["itl"]) <= r["output_tokens"] - 1 for r in per_request)
    assert all(5 <= r["prompt_len"] <= 15 for r in per_request)


def test_sharegpt_over_chat(tmp_path, server):
    data = tmp_path / "sharegpt.json"
    conversation = [
        {"from": "human", "value": "Tell me about the sea and the ships on it."},
        {"from": "gpt", "value": "The sea is wide and the ships are many, sailing far."},
    ]
    data.write_text(json.dumps([{"conversations": conversation}] * 3))
    result = _run(
        tmp_path, "--base-url", server.url, "--endpoint", "/v1/chat/completions", "--dataset", "sharegpt",
        "--dataset-path", str(data), "--tokenizer", "smollm2-135m", "--num-prompts", "3",
        "--ignore-eos", "--sharegpt-output-len", "4",
    )
    assert (result["completed"], result["failed"]) == (3, 0)
    assert result["total_output_tokens"] == 12
    assert result["total_input_tokens"] > 3 * 10  # counted by the server, chat template included


def test_failures_are_counted_not_fatal(tmp_path, server, capsys):
    # Prompt + output beyond the server's 128 tokens: every request is refused with a 400.
    out = tmp_path / "result.json"
    code = benchmark_serving.main([
        "--base-url", server.url, "--num-prompts", "2", "--random-input-len", "200", "--random-output-len", "4",
        "--random-vocab-size", "100", "--num-warmups", "0", "--result-file", str(out), "--disable-tqdm",
    ])
    assert code == 1
    assert json.loads(out.read_text())["failed"] == 2
    assert "context length" in capsys.readouterr().err
