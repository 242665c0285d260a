"""Gemma-3-270M and Qwen2.5-Coder-0.5B against transformers in float32 on the CPU.

Slow (transformers' GGUF loader takes minutes here), so the Bazel target is tagged manual:
    ./bazelw test //max/tests/integration/accuracy:verify_real_models_test
"""

from pathlib import Path

from max.testing.cli import run_script

SCRIPT = Path(__file__).parent / "verify_pipelines.py"


def test_gemma3_and_qwen25_float32(tmp_path):
    report = tmp_path / "report.md"
    specs = ["gemma-3-270m-float32", "Qwen2.5-Coder-0.5B-Instruct-float32"]
    args = [a for s in specs for a in ("--pipeline", s)]
    result = run_script(SCRIPT, *args, "--report", str(report), timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    for spec in specs:
        assert f"| {spec} | OK |" in report.read_text()
