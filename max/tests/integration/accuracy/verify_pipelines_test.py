"""verify_pipelines passes for every tiny-random pipeline and for SmolLM2-135M-Instruct in
float32 on the CPU."""

from pathlib import Path

from max.testing.cli import run_script
from max.verification.named_pipelines import NAMED_PIPELINES

SCRIPT = Path(__file__).parent / "verify_pipelines.py"


def run(*args: str):
    return run_script(SCRIPT, *args, timeout=1200)


def test_all_tiny_random_and_smollm2_float32(tmp_path):
    specs = [f"{p.display_name}-float32" for p in NAMED_PIPELINES if p.name.startswith("tiny-random-")]
    specs.append("SmolLM2-135M-Instruct-float32")
    args = [a for s in specs for a in ("--pipeline", s)]
    report = tmp_path / "report.md"
    result = run(*args, "--devices", "cpu", "--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = report.read_text()
    for spec in specs:
        row = next(line for line in table.splitlines() if line.startswith(f"| {spec} "))
        assert "| OK |" in row, row


def test_unknown_pipeline_is_a_usage_error():
    result = run("--pipeline", "NoSuchModel-float32")
    assert result.returncode == 1 and "unknown pipeline" in result.stderr


def test_tensor_parallel_pipelines_pass(tmp_path):
    """Ours on 2 ranks (CPU processes over gloo) against transformers."""
    report = tmp_path / "report.md"
    specs = ["tiny-random-llama3-float32", "tiny-random-qwen3-moe-float32"]
    args = [a for s in specs for a in ("--pipeline", s)]
    result = run(*args, "--devices", "cpu", "--tensor-parallel-size", "2", "--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = report.read_text()
    assert all(f"| {s} | OK |" in table for s in specs), table


def test_fp8_pipelines_pass_bfloat16_s_thresholds(tmp_path):
    """`<name>-fp8`: ours with --quantization fp8 (here the CPU's float32 emulation of it)
    against transformers in bfloat16."""
    report = tmp_path / "report.md"
    specs = ["tiny-random-llama3-fp8", "tiny-random-qwen3-moe-fp8"]
    args = [a for s in specs for a in ("--pipeline", s)]
    result = run(*args, "--devices", "cpu", "--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = report.read_text()
    assert all(f"| {s} | OK |" in table for s in specs), table


def test_fp8_kv_cache_pipelines_pass_their_thresholds(tmp_path):
    """`<name>-fp8kv`: ours in float32 with --kv-cache-dtype fp8 (the CPU's emulation of the
    e4m3 cache) against transformers in float32 (thresholds in named_pipelines)."""
    report = tmp_path / "report.md"
    specs = ["tiny-random-llama3-fp8kv", "tiny-random-gpt-oss-fp8kv"]
    args = [a for s in specs for a in ("--pipeline", s)]
    result = run(*args, "--devices", "cpu", "--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = report.read_text()
    assert all(f"| {s} | OK |" in table for s in specs), table
