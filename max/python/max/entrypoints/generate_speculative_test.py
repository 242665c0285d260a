"""`generate --speculative-config` with a draft model and with an EAGLE-3 head (tiny random
checkpoints, CPU, float32): greedy output is exactly the output without speculation."""

import json

import pytest

from max.entrypoints.pipelines import main
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_eagle_heads import write_head

PROMPT = [1] + list(range(300, 317))


@pytest.fixture(scope="module")
def target_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("t"), llama_config(num_hidden_layers=7), seed=3)


def _generate(capsys, target_path, *extra):
    args = ["generate", "--model-path", str(target_path), "--skip-tokenizer-init", "--kv-cache-page-size", "4",
            "--max-length", "128", "--max-new-tokens", "10", "--ignore-eos",
            "--prompt-token-ids", *map(str, PROMPT), *extra]  # fmt: skip
    assert main(args) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("method", ["draft_model", "eagle3"])
def test_generate_with_the_flag_prints_what_it_prints_without(capsys, tmp_path, target_path, method):
    plain = _generate(capsys, target_path)
    assert len(plain.split()) == 10
    model = target_path if method == "draft_model" else write_head(tmp_path / "head", method, seed=5)
    flag = json.dumps({"method": method, "model": str(model), "num_speculative_tokens": 3})
    assert _generate(capsys, target_path, "--speculative-config", flag) == plain
