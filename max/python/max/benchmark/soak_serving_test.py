"""soak_serving for a few seconds against a `serve` it starts itself (a tiny config-only
model with random weights and a borrowed tokenizer): every valid request answered, the
malformed ones refused with 4xx, dropped streams cleaned up, forced tool calls answered on
the Messages and Responses routes, nothing left in use."""

import json

from max.benchmark import soak_serving
from max.testing.tiny_checkpoints import llama_config, write_config_only


def test_a_short_soak_loses_and_leaks_nothing(tmp_path):
    model = write_config_only(tmp_path / "tiny", llama_config())
    out = tmp_path / "soak.json"
    code = soak_serving.main(
        [
            "--duration", "8s", "--warmup", "2s", "--concurrency", "8", "--max-tokens", "8",
            "--malformed-fraction", "0.2", "--drop-fraction", "0.2", "--tool-fraction", "1", "--result-file", str(out),
            "--model-path", str(model), "--load-format", "dummy", "--tokenizer", "smollm2-135m",
            "--max-length", "512", "--kv-cache-page-size", "8",
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["valid_answered"] == report["valid_sent"] > 0 and report["valid_lost"] == 0
    assert report["malformed_refused_4xx"] == report["malformed_sent"] > 0
    assert report["dropped_streams"] > 0 and report["status_5xx"] == 0
    assert report["tool_requests_answered"] > 0  # forced tool calls on /v1/messages and /v1/responses
    assert report["after_drain"]["max_serve_kv_cache_pages_in_use"] == 0
    assert report["rss_mib_end"] > 0 and report["latency_s"]["p50"] > 0
