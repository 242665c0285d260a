"""`generate` and `serve --model-path ORG/NAME` through the real command, against a local
stand-in of the Hugging Face Hub (no network): the first run downloads the tiny checkpoint
with a progress bar and generates what transformers generates from the original files; a
second run works offline from the cache; `serve` downloads once (its engine process does
not ask the Hub again)."""

import httpx
import pytest
import torch

from max.testing.cli import run_cli
from max.testing.hub_stand_in import HubStandIn
from max.testing.parity import hf_greedy
from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

REPO = "acme/tiny-llama"
PROMPT = [1, 15, 300, 7, 2048]
STEPS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", llama_config(), with_tokenizer=True)


@pytest.fixture
def hub(checkpoint):
    with HubStandIn() as stand_in:
        stand_in.add_commit(REPO, checkpoint)
        yield stand_in
    assert stand_in.unserved == []


def _env(hub, tmp_path, offline: bool = False) -> dict:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN": "",
        "TQDM_POSITION": "-1",  # huggingface_hub's switch: progress bars without a terminal
    }


def test_generate_downloads_then_runs_offline(hub, checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    flags = ["generate", "--model-path", REPO, "--skip-tokenizer-init", "--prompt-token-ids", *map(str, PROMPT),
             "--max-new-tokens", str(STEPS), "--ignore-eos"]
    first = run_cli(*flags, env_extra=_env(hub, tmp_path))
    assert first.returncode == 0, first.stderr
    assert f"Downloading {REPO}" in first.stderr and "Fetching" in first.stderr  # the log line and the bar
    reference = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    expected = hf_greedy(reference, PROMPT, STEPS)
    assert [int(t) for t in first.stdout.split()] == expected

    hub.requests.clear()
    second = run_cli(*flags, env_extra=_env(hub, tmp_path, offline=True))
    assert second.returncode == 0, second.stderr
    assert [int(t) for t in second.stdout.split()] == expected
    assert "Downloading" not in second.stderr and hub.requests == []


def test_serve_downloads_once(hub, tmp_path):
    with ServerProcess("--model-path", REPO, "--max-length", "256", env=_env(hub, tmp_path)) as server:
        response = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": REPO, "prompt": "Hello", "max_tokens": 4, "temperature": 0},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == REPO
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == [REPO]
    # One look-up of the revision: the engine process loads the pinned commit from the cache.
    assert [r.path for r in hub.requests if r.path.startswith("/api/models/")].count(f"/api/models/{REPO}") == 1
    assert len(hub.downloads("model.safetensors")) == 1


def test_missing_repo_is_one_error_line(hub, tmp_path):
    result = run_cli("generate", "--model-path", "acme/no-such-model", "--prompt", "x", env_extra=_env(hub, tmp_path))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "acme/no-such-model was not found on the Hub" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
