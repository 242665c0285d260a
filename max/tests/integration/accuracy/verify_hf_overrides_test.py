"""generate_llm_logits --hf-overrides reaches both frameworks: ours and transformers with
the same override pass strict float32 thresholds; ours without it fails against the
overridden reference (the override really applies); a value that is not a JSON object is a
usage error."""

from pathlib import Path

from max.testing.cli import run_script
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

HERE = Path(__file__).parent
GENERATE = HERE.parent / "tools" / "generate_llm_logits.py"
VERIFY = HERE / "verify.py"
STRICT = ["--eval-metric", "cos,kl,tol", "--relative-tolerance", "1e-4", "--absolute-tolerance", "1e-5",
          "--cos-dist-threshold", "1e-6", "--kl-div-threshold", "1e-6"]  # fmt: skip
# A norm epsilon far from the checkpoint's 1e-6: every layer's output moves.
OVERRIDE = '{"rms_norm_eps": 0.5}'


def test_overrides_reach_both_frameworks(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", llama_config(), seed=5, with_tokenizer=True)
    common = ["--pipeline", str(base), "--device", "cpu", "--encoding", "float32", "--num-steps", "3"]
    ref, ours, plain = tmp_path / "torch.json", tmp_path / "max.json", tmp_path / "plain.json"
    for framework, out, extra in (
        ("torch", ref, ["--hf-overrides", OVERRIDE]),
        ("max", ours, ["--hf-overrides", OVERRIDE, "--reference", str(ref)]),
        ("max", plain, ["--reference", str(ref)]),
    ):
        r = run_script(GENERATE, "--framework", framework, *common, "--output", str(out), *extra)
        assert r.returncode == 0, r.stderr
    assert run_script(VERIFY, *STRICT, str(ours), str(ref)).returncode == 0
    assert run_script(VERIFY, *STRICT, str(plain), str(ref)).returncode == 2

    r = run_script(GENERATE, "--framework", "max", *common, "--output", str(tmp_path / "x.json"), "--hf-overrides", "[1]")
    assert r.returncode == 1 and "expected a JSON object" in r.stderr  # a usage error (2: accuracy)
