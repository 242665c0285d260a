"""LoRA adapters through `serve` with the official `openai` client, on a tiny checkpoint and
tiny PEFT adapters: a request picks its adapter by `model` and gets the tokens
transformers + PEFT give; adapters listed with their parent; load and unload while serving,
behind the API key; unknown adapters are 404s that affect nothing else."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_lora import peft_reference, write_tiny_adapter

MODEL, KEY = "tiny-llama", "sekret"
PROMPT = [1, 15, 300, 7, 2048, 9]
STEPS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = write_tiny_checkpoint(root / "base", llama_config(), seed=2, with_tokenizer=True)
    adapters = {name: write_tiny_adapter(base, root / name, seed=i, magnitude=0.3) for i, name in enumerate(["a", "b"])}
    big = write_tiny_adapter(base, root / "big", seed=9, rank=32)
    srv = ServerProcess(
        "--model-path", str(base), "--served-model-name", MODEL, "--max-length", "256", "--kv-cache-page-size", "8",
        "--quantization-encoding", "float32", "--api-key", KEY,
        "--enable-lora", "--lora-modules", f"a={adapters['a']}", "--max-loras", "2", "--max-lora-rank", "16",
    )  # fmt: skip
    yield srv, base, adapters, big
    assert srv.stop() == 0


def _expected(base, adapter):
    reference = peft_reference(base, adapter)
    with torch.no_grad():
        out = reference.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    return out[0, len(PROMPT) :].tolist()


def _tokens(client, model, steps=STEPS):
    reply = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=steps, temperature=0, extra_body={"return_token_ids": True, "ignore_eos": True}
    )
    return reply.choices[0].model_extra["token_ids"]


def _post(srv, path, body, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=120)


def test_adapters_serve_peft_tokens_and_load_and_unload_while_serving(setup):
    srv, base, adapters, big = setup
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {MODEL, "a"} and cards["a"].model_extra["parent"] == MODEL
    assert _tokens(client, "a") == _expected(base, adapters["a"])
    base_tokens = _tokens(client, MODEL)
    assert base_tokens != _tokens(client, "a")

    with pytest.raises(openai.NotFoundError, match="`b` does not exist"):
        _tokens(client, "b")
    assert _post(srv, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(adapters["b"])}, key=None).status_code == 401
    # Loading while requests run: every one of them finishes with the tokens it gets alone.
    solo = {MODEL: _tokens(client, MODEL, 40), "a": _tokens(client, "a", 40)}
    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(_tokens, client, m, 40) for m in [MODEL, "a"] * 4]
        loaded = _post(srv, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(adapters["b"])})
        assert [r.result() for r in running] == [solo[MODEL], solo["a"]] * 4
    assert loaded.status_code == 200, loaded.text
    assert _tokens(client, "b") == _expected(base, adapters["b"])
    assert {m.id for m in client.models.list().data} == {MODEL, "a", "b"}

    again = _post(srv, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(adapters["b"])})
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    too_big = _post(srv, "/v1/load_lora_adapter", {"lora_name": "big", "lora_path": str(big)})
    assert too_big.status_code == 400
    assert "rank 32, over --max-lora-rank 16" in too_big.json()["error"]["message"]
    missing = _post(srv, "/v1/load_lora_adapter", {"lora_name": "c"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"

    assert _post(srv, "/v1/unload_lora_adapter", {"lora_name": "b"}).status_code == 200
    gone = _post(srv, "/v1/unload_lora_adapter", {"lora_name": "b"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "lora_adapter_not_found"
    with pytest.raises(openai.NotFoundError):
        _tokens(client, "b")
    # Nothing else was affected: the base model and adapter a answer as before.
    assert _tokens(client, MODEL) == base_tokens
    assert _tokens(client, "a") == _expected(base, adapters["a"])
    assert json.loads(httpx.get(f"{srv.url}/health").text) == {"status": "ok"}
