"""benchmark_throughput end to end on a tiny config-only model with random weights: ours
and transformers on the same workload, and the single-request figures."""

import json

import pytest

from max.benchmark import benchmark_throughput
from max.testing.tiny_checkpoints import llama_config, write_config_only


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_config_only(tmp_path_factory.mktemp("cfg") / "tiny", llama_config()))


def _run(tmp_path, model_dir, *flags):
    out = tmp_path / "result.json"
    code = benchmark_throughput.main([
        "--model-path", model_dir, "--load-format", "dummy", "--max-length", "128",
        "--kv-cache-page-size", "8", "--disable-tqdm", "--result-file", str(out), *flags,
    ])
    assert code == 0
    return json.loads(out.read_text())


def test_both_backends_on_the_same_workload(tmp_path, model_dir, capsys):
    result = _run(
        tmp_path, model_dir, "--backend", "both", "--num-prompts", "6", "--random-input-len", "12",
        "--random-output-len", "5", "--random-range-ratio", "0.3", "--hf-batch-size", "4", "--max-batch-size", "4",
    )
    ours, hf = result["results"]["ours"], result["results"]["hf"]
    for r in (ours, hf):
        assert r["num_requests"] == 6
        assert r["elapsed_s"] > 0 and r["output_tokens_per_s"] > 0
        assert r["total_tokens_per_s"] > r["output_tokens_per_s"]
    assert ours["output_tokens"] == hf["output_tokens"]  # EOS ignored on both sides
    assert ours["prompt_tokens"] == hf["prompt_tokens"]
    assert hf["extra"]["hf_batch_size"] == 4 and result["max_batch_size"] == 4
    assert result["ratio_ours_over_hf"] == pytest.approx(ours["output_tokens_per_s"] / hf["output_tokens_per_s"])
    table = capsys.readouterr().out
    assert "| ours | 6 |" in table and "| hf | 6 |" in table and "ours / transformers" in table


def test_single_request_reports_ttft_and_decode_speed(tmp_path, model_dir):
    result = _run(tmp_path, model_dir, "--backend", "both", "--num-prompts", "1", "--random-output-len", "6", "--random-input-len", "8")
    for r in result["results"].values():
        assert r["output_tokens"] == 6
        assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0


def test_request_rate_and_engine_flags(tmp_path, model_dir):
    result = _run(
        tmp_path, model_dir, "--num-prompts", "4", "--random-input-len", "8", "--random-output-len", "3",
        "--request-rate", "50", "--max-num-batched-tokens", "16", "--no-enable-prefix-caching",
    )
    assert set(result["results"]) == {"ours"}
    assert result["results"]["ours"]["output_tokens"] == 12
    assert result["request_rate"] == 50.0 and result["max_num_batched_tokens"] == 16


def test_too_long_workload_is_a_clear_error(tmp_path, model_dir, capsys):
    code = benchmark_throughput.main([
        "--model-path", model_dir, "--load-format", "dummy", "--max-length", "32",
        "--num-prompts", "1", "--random-input-len", "40", "--random-output-len", "4",
    ])
    assert code == 1
    assert "raise --max-length" in capsys.readouterr().err


def test_random_images_for_a_vision_language_model(tmp_path):
    """Each prompt gets an image (56 x 56 px: 4 x 4 patches, 4 image tokens); the encoder's
    time is reported; a text-only model refuses images."""
    from max.testing.tiny_configs import TINY_CONFIGS

    vl_dir = str(write_config_only(tmp_path / "vl", TINY_CONFIGS["qwen2_5_vl"]))
    result = _run(
        tmp_path, vl_dir, "--num-prompts", "3", "--random-input-len", "10", "--random-output-len", "4",
        "--random-images-per-prompt", "2", "--random-image-size", "56x56",
    )
    ours = result["results"]["ours"]
    assert ours["prompt_tokens"] == 3 * (10 + 2 * (1 + 4 + 1))
    assert ours["output_tokens"] == 12
    assert ours["extra"]["images"] == 6 and 0 < ours["extra"]["vision_encoder_share"] < 1
    text_only = str(write_config_only(tmp_path / "t", llama_config()))
    assert benchmark_throughput.main(["--model-path", text_only, "--load-format", "dummy", "--random-images-per-prompt", "1"]) == 1


def test_step_stats_count_every_step(tmp_path, model_dir, capsys):
    result = _run(
        tmp_path, model_dir, "--num-prompts", "5", "--random-input-len", "10", "--random-output-len", "4",
        "--max-batch-size", "4", "--step-stats", "--no-enable-prefix-caching",
    )
    stats = result["results"]["ours"]["extra"]["step_stats"]
    kinds = stats["kinds"]
    assert sum(k["steps"] for k in kinds.values()) == stats["steps"] > 0
    # Every prompt token and every decode row went through some step.
    assert sum(k["tokens"] for k in kinds.values()) == 5 * 10 + 5 * 3
    assert set(kinds) <= {"graph_decode", "graph_prefill", "eager_decode", "eager_mixed", "eager_prefill"}
    assert sum(run[1] for run in stats["timeline"]) == stats["steps"]
    assert "| kind | steps |" in capsys.readouterr().out


def test_speculative_config_reports_spec_decode_counts(tmp_path, model_dir, capsys):
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 2}
    result = _run(
        tmp_path, model_dir, "--num-prompts", "3", "--random-input-len", "8", "--random-output-len", "24",
        "--speculative-config", json.dumps(spec),
    )
    counts = result["results"]["ours"]["extra"]["spec_decode"]
    assert counts["num_accepted_tokens"] <= counts["num_draft_tokens"] <= 3 * counts["num_drafts"]
    assert sum(counts["accepted_per_pos"]) == counts["num_accepted_tokens"]
    assert result["pipeline_config"]["speculative_config"]["num_speculative_tokens"] == 3
    assert result["results"]["ours"]["output_tokens"] == 72
    assert "speculative decoding:" in capsys.readouterr().out
