"""generate_llm_logits and verify with a LoRA adapter: ours serving the adapter against
transformers + PEFT on a tiny random checkpoint passes strict float32 thresholds; ours
without the adapter fails against the adapted reference (the adapter really applies)."""

from pathlib import Path

from max.testing.cli import run_script
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_lora import write_tiny_adapter

HERE = Path(__file__).parent
GENERATE = HERE.parent / "tools" / "generate_llm_logits.py"
VERIFY = HERE / "verify.py"
STRICT = ["--eval-metric", "cos,kl,tol", "--relative-tolerance", "1e-4", "--absolute-tolerance", "1e-5",
          "--cos-dist-threshold", "1e-6", "--kl-div-threshold", "1e-6"]  # fmt: skip


def test_adapter_verifies_against_transformers_with_peft(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", llama_config(), seed=4, with_tokenizer=True)
    adapter = write_tiny_adapter(base, tmp_path / "adapter", seed=3, magnitude=0.2)
    common = ["--pipeline", str(base), "--device", "cpu", "--encoding", "float32", "--num-steps", "4"]
    ref, ours, plain = tmp_path / "torch.json", tmp_path / "max.json", tmp_path / "plain.json"
    for framework, out, extra in (
        ("torch", ref, ["--lora", str(adapter)]),
        ("max", ours, ["--lora", str(adapter), "--reference", str(ref)]),
        ("max", plain, ["--reference", str(ref)]),
    ):
        r = run_script(GENERATE, "--framework", framework, *common, "--output", str(out), *extra)
        assert r.returncode == 0, r.stderr
    assert run_script(VERIFY, *STRICT, str(ours), str(ref)).returncode == 0
    assert run_script(VERIFY, *STRICT, str(plain), str(ref)).returncode == 2
