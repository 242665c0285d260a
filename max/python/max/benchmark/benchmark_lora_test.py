"""benchmark_lora end to end on a tiny config-only model with random weights and random
rank-4 adapters: the three phases side by side, and an adapter loaded the server's way
while requests stream."""

import json

from max.benchmark import benchmark_lora
from max.testing.tiny_checkpoints import llama_config, write_config_only


def test_phases_and_an_adapter_loaded_while_requests_stream(tmp_path, capsys):
    model = write_config_only(tmp_path / "tiny", llama_config())
    out = tmp_path / "lora.json"
    code = benchmark_lora.main([
        "--model-path", str(model), "--load-format", "dummy", "--max-length", "128", "--kv-cache-page-size", "8",
        "--quantization-encoding", "float32", "--num-prompts", "6", "--input-len", "10", "--output-len", "24",
        "--decode-len", "6", "--num-adapters", "2", "--lora-rank", "4", "--max-batch-size", "16",
        "--load-while-streaming", "12", "--result-file", str(out),
    ])  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    results = record["results"]
    assert set(results) == {"base engine, no adapters", "LoRA engine, 2 adapters", "LoRA engine, base requests", "load while streaming"}
    for name in ("base engine, no adapters", "LoRA engine, 2 adapters", "LoRA engine, base requests"):
        assert results[name]["output_tokens"] == 6 * 24 and results[name]["decode_tok_s"] > 0
    loading = results["load while streaming"]
    # Every streaming request, and one request per adapter on the new one, ran to the end
    # (a failure raises); the load took at least the step it started in.
    assert loading["streaming_requests"] == 12 and loading["new_adapter_requests"] == 3
    assert loading["load_steps"] >= 1 and loading["steps"] > 8
    assert loading["median_step_ms"] > 0 and loading["max_gap_in_steps"] > 0
    printed = capsys.readouterr().out
    assert "throughput with adapters:" in printed
    assert "an adapter loaded while 12 requests streamed: 0 failed" in printed
