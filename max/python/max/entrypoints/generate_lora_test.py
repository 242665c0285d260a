"""`generate --lora PATH`: the adapter's greedy tokens are transformers + PEFT's, for an
adapter whose rank is over the default --max-lora-rank; a missing adapter is one error line."""

import torch

from max.testing.cli import run_cli
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_lora import peft_reference, write_tiny_adapter

PROMPT = [1, 15, 300, 7]


def test_generate_with_a_lora_adapter_gives_the_peft_tokens(tmp_path):
    base = write_tiny_checkpoint(tmp_path / "base", llama_config(), seed=2)
    adapter = write_tiny_adapter(base, tmp_path / "adapter", seed=1, rank=32, magnitude=0.3)
    flags = ["--model-path", str(base), "--skip-tokenizer-init", "--quantization-encoding", "float32", "--ignore-eos",
             "--max-new-tokens", "6", "--prompt-token-ids", *map(str, PROMPT)]  # fmt: skip
    result = run_cli("generate", *flags, "--lora", str(adapter))
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        out = peft_reference(base, adapter).generate(torch.tensor([PROMPT]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert [int(t) for t in result.stdout.split()] == out[0, len(PROMPT) :].tolist()
    missing = run_cli("generate", *flags, "--lora", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: LoRA adapter") and "no such folder" in missing.stderr
