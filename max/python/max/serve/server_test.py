"""The server end to end on a tiny checkpoint (with SmolLM2's tokenizer): the official
`openai` client, 64 concurrent streams, every kind of bad request, disconnects, metrics,
and a clean exit on SIGTERM."""

import asyncio
import json
import signal
import socket
import time

import httpx
import openai
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", llama_config(), seed=2, with_tokenizer=True)
    # float32 (the reference path): batched and one-by-one answers must be equal token for
    # token, which `auto`'s bfloat16 on a CPU with native bfloat16 does not promise.
    srv = ServerProcess(
        "--model-path", str(path), "--served-model-name", MODEL, "--max-length", "256",
        "--kv-cache-page-size", "8", "--max-queue-size", "200", "--quantization-encoding", "float32",
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _greedy_chat(client, content, max_tokens=12, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0, **extra
    )


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/v1/health").status_code == 200


def test_chat_stream_equals_non_stream(client):
    full = _greedy_chat(client, "Tell me a story")
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 0
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens


def test_completions_forms_echo_and_logprobs(client):
    text = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, temperature=0)
    ids = client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=6, temperature=0)
    many = client.completions.create(model=MODEL, prompt=["Hello there", "Bye"], max_tokens=6, temperature=0)
    assert many.choices[0].text == text.choices[0].text and len(many.choices) == 2
    assert ids.choices[0].text
    lists = client.completions.create(model=MODEL, prompt=[[1, 2, 3, 4], [5, 6]], max_tokens=3, temperature=0)
    assert lists.choices[0].text == client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=3, temperature=0).choices[0].text
    lp = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice = lp.choices[0]
    assert choice.text.startswith("Hello there")
    assert choice.logprobs.token_logprobs[0] is None  # the first prompt token has none
    assert all(v is not None for v in choice.logprobs.token_logprobs[1:])
    assert len(choice.logprobs.top_logprobs[-1]) == 2
    scored = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=0, echo=True, logprobs=0)
    assert scored.usage.completion_tokens == 0 and scored.choices[0].text == "Hello there"


def test_chat_logprobs(client):
    out = _greedy_chat(client, "Hi", max_tokens=3, logprobs=True, top_logprobs=3)
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 for e in entries)
    assert entries[0].logprob == pytest.approx(entries[0].top_logprobs[0].logprob)


def test_n_and_seed(client):
    kwargs = dict(model=MODEL, prompt="Once", max_tokens=8, temperature=1.0, top_p=0.95, n=2, seed=42)
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text  # each choice draws its own tokens
    c = client.completions.create(**{**kwargs, "seed": 43})
    assert [x.text for x in c.choices] != [x.text for x in a.choices]
    assert 2 <= a.usage.completion_tokens <= 16  # both choices are counted


def test_stop_strings_cut_the_text(client):
    full = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=16, temperature=0).choices[0].text
    assert len(full) > 6
    stop = full[3:6]
    cut = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


async def _stream_one(aclient, i):
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Request number {i}: " + "word " * (i % 7)}],
        max_tokens=10 + i % 5,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text = ""
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text


def test_64_concurrent_streams_equal_sequential(server, client):
    async def run_all():
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(_stream_one(aclient, i) for i in range(64)))
        finally:
            await aclient.close()

    concurrent = asyncio.run(run_all())
    sequential = [
        _greedy_chat(client, f"Request number {i}: " + "word " * (i % 7), max_tokens=10 + i % 5, extra_body={"ignore_eos": True})
        .choices[0]
        .message.content
        for i in range(64)
    ]
    assert concurrent == sequential
    assert server.metric("max_serve_kv_cache_pages_in_use") == 0
    assert server.metric("max_serve_num_requests_running") == 0


BAD_REQUESTS = [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
    ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "unknown role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "content[0].image_url"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "images_not_supported"),
    ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 400, "model_not_found"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400, "'model' is required"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7}, 400, "temperature"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "context_length_exceeded"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "'n'"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": [1]}, 400, "stop"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"model": MODEL, "prompt": "word " * 400}, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 10**9]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [[1], "a"]}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL}, 400, "'prompt' is required"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "echo"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": "abc"}, 400, "seed"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD_REQUESTS)
def test_bad_requests_get_openai_errors(server, path, body, status, needle):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in json.dumps(error)


def test_not_found_and_wrong_method(server):
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server.url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_server_keeps_serving_after_bad_requests(client):
    assert _greedy_chat(client, "still there?").choices[0].message.content is not None


def test_disconnect_mid_stream_cancels_the_request(server):
    body = json.dumps(
        {"model": MODEL, "prompt": "a long one", "max_tokens": 200, "stream": True, "ignore_eos": True}
    ).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        received = b""
        while received.count(b"data:") < 3:
            received += sock.recv(4096)
    # The socket is closed: within a few steps the engine drops the request and its pages.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.metric("max_serve_num_requests_running") == 0 and server.metric("max_serve_kv_cache_pages_in_use") == 0:
            break
        time.sleep(0.1)
    assert server.metric("max_serve_num_requests_running") == 0
    assert server.metric("max_serve_kv_cache_pages_in_use") == 0
    assert server.metric("max_serve_num_requests_in_flight") == 0


def test_disconnect_mid_request_cancels_it(server):
    """A non-streaming request whose client leaves stops generating: fewer tokens than asked."""
    before = server.metric("max_serve_generation_tokens_total")
    body = json.dumps({"model": MODEL, "prompt": "go on", "max_tokens": 240, "ignore_eos": True}).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + 30
        while server.metric("max_serve_generation_tokens_total") == before and time.monotonic() < deadline:
            time.sleep(0.01)
    # The engine's gauges arrive with its next step's outputs, after the HTTP side let go.
    gauges = ("max_serve_num_requests_in_flight", "max_serve_num_requests_running", "max_serve_kv_cache_pages_in_use")
    deadline = time.monotonic() + 30
    while any(server.metric(g) != 0 for g in gauges) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [server.metric(g) for g in gauges] == [0, 0, 0]
    assert server.metric("max_serve_generation_tokens_total") - before < 240


def test_metrics_page(server):
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        'max_serve_requests_total{status="200"}',
        'max_serve_requests_total{status="400"}',
        "max_serve_prompt_tokens_total",
        "max_serve_generation_tokens_total",
        "max_serve_time_to_first_token_seconds_bucket",
        "max_serve_inter_token_latency_seconds_count",
        "max_serve_num_requests_waiting",
        "max_serve_kv_cache_pages_in_use",
    ):
        assert name in text, name


def test_metrics_page_reports_the_start_up_memory(server):
    """The engine's memory report (weights, KV cache, activations) reaches /metrics."""
    for component in ("weights", "kv_cache", "activations"):
        assert server.metric(f'max_serve_memory_bytes{{component="{component}"}}') > 0, component


def test_api_key_and_sigterm(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", llama_config(num_hidden_layers=1), with_tokenizer=True)
    with ServerProcess("--model-path", str(path), "--api-key", "sekrit", "--max-length", "64") as srv:
        r = httpx.get(f"{srv.url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.get(f"{srv.url}/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == str(path)
        assert httpx.get(f"{srv.url}/health").status_code == 200  # health needs no key
        assert srv.stop(signal.SIGTERM) == 0
        assert "Server ready on" in srv.log()


def test_tokenize_and_detokenize(server):
    post = lambda path, body: httpx.post(server.url + path, json=body, timeout=30)  # noqa: E731
    r = post("/tokenize", {"model": MODEL, "prompt": "Hello there"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 256
    back = post("/detokenize", {"model": MODEL, "tokens": body["tokens"]}).json()
    assert back["prompt"].endswith("Hello there")
    chat = post("/tokenize", {"messages": [{"role": "user", "content": "Hi"}], "return_token_strs": True}).json()
    assert len(chat["token_strs"]) == chat["count"]
    rendered = post("/detokenize", {"tokens": chat["tokens"]}).json()["prompt"]
    assert "Hi" in rendered and rendered.endswith("assistant\n")  # the generation prompt
    # The chat endpoint prompts exactly these tokens.
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "return_token_ids": True},
        timeout=30,
    ).json()
    assert reply["choices"][0]["prompt_token_ids"] == chat["tokens"]
    assert post("/detokenize", {"tokens": [10**9]}).status_code == 400
    assert post("/tokenize", {"model": MODEL}).json()["error"]["param"] == "prompt"


def test_max_completion_tokens_is_max_tokens(client):
    for create in (client.completions.create, None):
        if create is None:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=3,
                temperature=0, extra_body={"ignore_eos": True},
            )  # fmt: skip
        else:
            reply = create(model=MODEL, prompt="Hi", temperature=0, extra_body={"max_completion_tokens": 3, "ignore_eos": True})
        assert reply.usage.completion_tokens == 3


def test_openapi_json_is_valid_openapi_3_and_lists_every_route(server):
    from openapi_spec_validator import validate

    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    validate(document)
    assert document["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize"):
        assert path in document["paths"], path


def test_typed_bodies_name_the_path_and_ignore_unknown_fields(server):
    post = lambda body: httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)  # noqa: E731
    ok = post({"model": MODEL, "messages": [{"role": "user", "content": "x", "extra": 1}], "max_tokens": 1, "x_unknown": {"a": 1}})
    assert ok.status_code == 200, ok.text
    bad = post({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].content[0].text", bad.text


def test_vllm_metric_names(server, client):
    client.completions.create(model=MODEL, prompt="Hello there", max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("vllm:") and f'model_name="{MODEL}"' in line:
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = values.get(name.split("{")[0], 0) + float(value)
    for name in (
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_count", "vllm:time_per_output_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count", "vllm:prefix_cache_queries_total",
    ):  # fmt: skip
        assert values.get(name, 0) > 0, (name, text)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total"):
        assert name in values, name
