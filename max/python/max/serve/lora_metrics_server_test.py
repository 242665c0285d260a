"""`serve --enable-lora` with three adapters and two device slots, scraped over HTTP and read
with prometheus_client's parser: `vllm:lora_requests_info` names the running adapters and
the one waiting for a slot, and the slot counters count the loads and the eviction."""

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint
from max.testing.tiny_lora import write_plain_adapter

MODEL = "tiny-llama"
PROMPT = [1, 15, 300, 7, 2048, 9]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_metrics")
    base = write_tiny_checkpoint(root / "base", llama_config(), seed=2, with_tokenizer=True)
    modules = [f"{n}={write_plain_adapter(base, root / n, seed=i)}" for i, n in enumerate("abc")]
    srv = ServerProcess(
        "--model-path", str(base), "--served-model-name", MODEL, "--max-length", "256", "--kv-cache-page-size", "8",
        "--quantization-encoding", "float32", "--enable-lora", "--lora-modules", *modules,
        "--max-loras", "2", "--max-lora-rank", "8",
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0


def _scrape(srv) -> dict:
    """/metrics as prometheus_client parses it: family name -> family."""
    reply = httpx.get(f"{srv.url}/metrics", timeout=30)
    assert reply.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(reply.text)}


def _lora(srv):
    """The LoRA info sample's labels and value, and the loads and evictions counters."""
    families = _scrape(srv)
    (info,) = families["vllm:lora_requests_info"].samples
    loads = families["max_serve_lora_adapter_loads"].samples[0].value
    evictions = families["max_serve_lora_adapter_evictions"].samples[0].value
    return info.labels, info.value, loads, evictions


def _body(model, max_tokens, stream):
    return {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}


def test_lora_requests_info_and_slot_counters(server):
    labels, stamp, loads, evictions = _lora(server)
    assert labels == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert abs(stamp - time.time()) < 600 and (loads, evictions) == (0, 0)

    url = f"{server.url}/v1/completions"
    with httpx.Client(timeout=120) as client, ExitStack() as open_streams, ThreadPoolExecutor(1) as pool:
        streams = []
        for model in "ab":  # a and b hold both slots once each has sent a token
            response = open_streams.enter_context(client.stream("POST", url, json=_body(model, 240, True)))
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            streams.append(lines)
        waiting_c = pool.submit(httpx.post, url, json=_body("c", 4, False), timeout=120)
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            labels, *_ = _lora(server)
            seen.append(labels)
            if labels["waiting_lora_adapters"] == "c":
                break
            time.sleep(0.02)
        assert labels == {"max_lora": "2", "running_lora_adapters": "a,b", "waiting_lora_adapters": "c"}, seen[-5:]
        for lines in streams:
            assert "data: [DONE]" in list(lines)  # the rest of the stream
        assert waiting_c.result().status_code == 200

    labels, later, loads, evictions = _lora(server)
    assert labels == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert later >= stamp
    # a and b loaded into the empty slots; c then took the slot of one of them.
    assert (loads, evictions) == (3, 1)
