"""Fuzzing the real server: bodies generated from each generation route's schema, then
broken (wrong types, out-of-range and adversarial values, unknown and missing fields) or
mangled as bytes (truncated, bit-flipped, invalid UTF-8, nested 100,000 deep, oversized),
plus wrong methods, paths and headers on every route.

Two phases: a sweep that sets every field of each route, one at a time, to each edge value
of its type (numbers past every integer width, NaN, unpaired surrogates, huge strings...)
and to a few values of other types; then random cases.

Routes: chat and text completions, Anthropic's Messages and OpenAI's Responses.
Properties: no answer is a 5xx; every error is OpenAI's error shape (Anthropic's on
/v1/messages) without tracebacks or paths; every stream is well-formed; afterwards the server is healthy and nothing is left in
flight (HTTP requests, engine requests, KV pages).

A seeded fuzzer of our own (hypothesis is not a dependency): MAX_FUZZ_SEED picks the seed
and MAX_FUZZ_CASES the number of random cases (default 200; the whole test takes about half
a minute on two CPU cores).
"""

import asyncio
import json
import os
import random
import select
import socket
import time
from typing import Any

import httpx
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import llama_config, write_tiny_checkpoint

MODEL = "tiny-llama"
SEED = int(os.environ.get("MAX_FUZZ_SEED", "20261128"))
CASES = int(os.environ.get("MAX_FUZZ_CASES", "200"))
CONCURRENCY = 4
BODY_LIMIT = 256 * 1024
VOCAB = 64  # ids below this are valid for the tiny tokenizer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("fuzz") / "m", llama_config(), seed=5, with_tokenizer=True)
    srv = ServerProcess(
        "--model-path", str(path), "--served-model-name", MODEL, "--max-length", "64",
        "--kv-cache-page-size", "8", "--max-request-body-bytes", str(BODY_LIMIT), "--max-prompt-chars", "2000",
        "--max-queue-size", "64",
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0


# -- the schema: a valid value of each field, and how to break it -------------------------------
def _text(rng: random.Random) -> str:
    alphabet = ["a", "b", " ", "Hello", "é", "日本", "🙂", "\n", "\t", "\\", '"', "{", "[", "\u200b", "\x00"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def _ids(rng: random.Random) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(rng.randint(1, 8))]


def _message(rng: random.Random) -> dict:
    role = rng.choice(["system", "user", "assistant", "developer", "user", "user"])
    if rng.random() < 0.3:
        return {"role": role, "content": [{"type": "text", "text": _text(rng)} for _ in range(rng.randint(1, 3))]}
    return {"role": role, "content": _text(rng)}


COMMON: dict[str, Any] = {
    "model": lambda r: MODEL,
    "max_tokens": lambda r: r.randint(1, 6),
    "temperature": lambda r: r.choice([0, 0.5, 1.0, 2.0]),
    "top_p": lambda r: r.choice([0.1, 0.9, 1.0]),
    "top_k": lambda r: r.choice([-1, 0, 1, 5, 10**6]),
    "min_p": lambda r: r.choice([0.0, 0.1, 1.0]),
    "seed": lambda r: r.choice([0, 1, -(2**63), 2**64 - 1]),
    "n": lambda r: r.randint(1, 3),
    "stream": lambda r: r.random() < 0.5,
    "stream_options": lambda r: {"include_usage": r.random() < 0.5},
    "stop": lambda r: r.choice([_text(r) or "x", [_text(r) or "y" for _ in range(r.randint(1, 3))]]),
    "stop_token_ids": lambda r: _ids(r),
    "ignore_eos": lambda r: r.random() < 0.5,
    "repetition_penalty": lambda r: r.choice([0.5, 1.0, 1.3]),
    "frequency_penalty": lambda r: r.choice([-2.0, 0.0, 1.5]),
    "presence_penalty": lambda r: r.choice([-1.0, 0.0, 2.0]),
    "return_token_ids": lambda r: r.random() < 0.5,
}
ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        **COMMON,
        "messages": lambda r: [_message(r) for _ in range(r.randint(1, 3))],
        "logprobs": lambda r: r.random() < 0.5,
        "top_logprobs": lambda r: r.randint(0, 5),
        "max_completion_tokens": lambda r: r.randint(1, 6),
        "reasoning_effort": lambda r: r.choice(["low", "medium", "high"]),
    },
    "/v1/completions": {
        **COMMON,
        "prompt": lambda r: r.choice([_text(r) or "hi", [_text(r) or "a", "b"], _ids(r), [_ids(r), _ids(r)]]),
        "echo": lambda r: r.random() < 0.5,
        "logprobs": lambda r: r.randint(0, 5),
    },
}
ROUTES["/v1/messages"] = {  # Anthropic's Messages API
    "model": lambda r: MODEL,
    "max_tokens": lambda r: r.randint(1, 6),
    "messages": lambda r: [{"role": "user", "content": r.choice([_text(r) or "hi", [{"type": "text", "text": _text(r)}]])}],
    "system": lambda r: r.choice([_text(r), [{"type": "text", "text": _text(r)}]]),
    "stop_sequences": lambda r: [_text(r) or "x"],
    "temperature": lambda r: r.choice([0, 0.5, 1.0]),
    "top_k": lambda r: r.choice([1, 5]),
    "stream": lambda r: r.random() < 0.5,
    "tools": lambda r: [{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}],
    "tool_choice": lambda r: {"type": r.choice(["auto", "none"])},
}
ROUTES["/v1/responses"] = {  # OpenAI's Responses API
    "model": lambda r: MODEL,
    "input": lambda r: r.choice([_text(r) or "hi", [{"role": "user", "content": [{"type": "input_text", "text": _text(r)}]}]]),
    "instructions": lambda r: _text(r),
    "max_output_tokens": lambda r: r.randint(1, 6),
    "temperature": lambda r: r.choice([0, 0.5, 1.0]),
    "stream": lambda r: r.random() < 0.5,
    "store": lambda r: r.random() < 0.5,
    "previous_response_id": lambda r: "resp_missing",
    "tools": lambda r: [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
    "text": lambda r: {"format": {"type": r.choice(["text", "json_object"])}},
}
REQUIRED = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/completions": ("model", "prompt"),
    "/v1/messages": ("model", "max_tokens", "messages"),
    "/v1/responses": ("model", "input"),
}
# The last event of a well-formed stream on the routes whose events are not OpenAI's chunks.
LAST_EVENT = {"/v1/messages": "message_stop", "/v1/responses": "response.completed"}

ADVERSARIAL = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, -(2**70), 10**400 // 10**300, 1e308, -1e308, 0.5, -0.0,
    float("nan"), float("inf"), "", "x", "nan", "Infinity", "1", "x" * 5000, "\x00", "\ud800", "🙂" * 50,
    [], [1], ["a"], [[]], [None], [{}], {}, {"a": 1}, {"include_usage": "yes"}, list(range(3000)),
    [[1, 2]] * 300, [{"role": "user", "content": None}], [{"role": "user"}], [{"content": "x"}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
    [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": {"text": "x"}}],
]  # fmt: skip


NUMBER_EDGES = [-1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1, 1e308, -1e-308, 0.5,
                float("nan"), float("inf"), -float("inf")]  # fmt: skip
TEXT_EDGES = ["", "\ud800", "a\udfffb", "\x00", "\U0010ffff", "x" * 3000, "\r\n" * 500, "<|endoftext|>", "{{ x }}",
              "{% raise %}", "🙂" * 100]  # fmt: skip


def _valid_body(rng: random.Random, route: str) -> dict:
    schema = ROUTES[route]
    body = {name: schema[name](rng) for name in REQUIRED[route]}
    # Sampling on the CPU is slow: keep answers short.
    body["max_output_tokens" if route == "/v1/responses" else "max_tokens"] = rng.randint(1, 6)
    for name in rng.sample(sorted(schema), rng.randint(0, 6)):
        body[name] = schema[name](rng)
    if route == "/v1/responses" and body.get("previous_response_id") and rng.random() < 0.7:
        del body["previous_response_id"]  # mostly answerable: an unknown id is a 404
    return body


def _edge_value(rng: random.Random, valid: Any) -> Any:
    """A value of the same type as `valid` at or past the edges of its range."""
    if isinstance(valid, bool):
        return rng.choice([0, 1, "true", None])
    if isinstance(valid, (int, float)):
        return rng.choice(NUMBER_EDGES)
    if isinstance(valid, str):
        return rng.choice(TEXT_EDGES)
    if isinstance(valid, list) and valid and isinstance(valid[0], dict):  # messages
        return [{**m, "content": rng.choice(TEXT_EDGES)} for m in valid]
    if isinstance(valid, list) and valid and isinstance(valid[0], int):  # token ids
        return [rng.choice(NUMBER_EDGES) if rng.random() < 0.3 else t for t in valid]
    if isinstance(valid, list):
        return [rng.choice(TEXT_EDGES) for _ in valid]
    return rng.choice(ADVERSARIAL)


def _broken_body(rng: random.Random, route: str) -> dict:
    body = _valid_body(rng, route)
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        name = rng.choice(sorted(ROUTES[route]))
        if kind < 0.4:
            body[name] = _edge_value(rng, ROUTES[route][name](rng))
        elif kind < 0.7:
            body[name] = rng.choice(ADVERSARIAL)
        elif kind < 0.85:
            body.pop(rng.choice(REQUIRED[route]), None)
        else:
            body[rng.choice(["tools", "logit_bias", "user", "__proto__", "response_format", ""])] = rng.choice(ADVERSARIAL)
    return body


def _encode(body: Any) -> bytes:
    # NaN and Infinity as Python writes them (not JSON, but parsers meet them); lone
    # surrogates escaped, so the bytes stay valid UTF-8.
    return json.dumps(body).encode()


def _mangled_bytes(rng: random.Random, route: str) -> bytes:
    raw = _encode(_valid_body(rng, route))
    kind = rng.randrange(9)
    if kind == 0:
        return raw[: rng.randrange(len(raw))]
    if kind == 1:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:
        cut = rng.randrange(len(raw))
        return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"]) + raw[cut:]
    if kind == 3:
        depth = rng.choice([65, 1000, 100_000])
        return b'{"model": "' + MODEL.encode() + b'", "prompt": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if kind == 4:
        return rng.choice([b"", b"null", b"[]", b'"text"', b"1e999", b"{}", b"{{}", b"\xef\xbb\xbf{}", b" " * 1000])
    if kind == 5:
        return raw[:-1] + b', "model": 5, "model": "' + MODEL.encode() + b'"}'  # duplicate keys
    if kind == 6:
        return _encode({**_valid_body(rng, route), "prompt": "z" * (BODY_LIMIT + 10)})
    if kind == 7:
        return raw.replace(b'"', b"'")
    return raw + b"garbage"


def _shape(value: Any) -> str:
    """A value's type, and its first element's for lists."""
    inner = type(value[0]).__name__ if isinstance(value, list) and value else ""
    return f"{type(value).__name__}[{inner}]"


def _edge_cases(rng: random.Random) -> list[dict]:
    """Every field of each route set, alone, to each edge value of its type and to a few
    values of other types, in an otherwise valid greedy request."""
    cases = []
    for route, schema in sorted(ROUTES.items()):
        for name in sorted(schema):
            edges: list = [None, [], {}, "x", True, [[1]]]
            shapes = {}  # a field may take several shapes (prompt: text, texts, ids, id lists)
            for _ in range(8):
                valid = schema[name](rng)
                shapes.setdefault(_shape(valid), valid)
            for valid in shapes.values():
                if isinstance(valid, bool):
                    edges += [0, 1, "true"]
                elif isinstance(valid, (int, float)):
                    edges += NUMBER_EDGES
                elif isinstance(valid, str):
                    edges += TEXT_EDGES
                else:
                    edges += [_edge_value(rng, valid) for _ in range(6)]
            for value in edges:
                body = {**_valid_body(rng, route), "temperature": 0, "n": 1, name: value}
                cases.append({"method": "POST", "path": route, "headers": {}, "content": _encode(body)})
    return cases


def _case(rng: random.Random) -> dict:
    """One request to send: method, path, headers, body."""
    route = rng.choice(sorted(ROUTES))
    kind = rng.random()
    headers = {"content-type": "application/json"}
    if kind < 0.3:
        content = _encode(_valid_body(rng, route))
    elif kind < 0.65:
        content = _encode(_broken_body(rng, route))
    elif kind < 0.9:
        content = _mangled_bytes(rng, route)
    else:
        method, path = rng.choice(
            [("GET", route), ("PUT", route), ("POST", "/v1/models"), ("GET", "/v1/models?x=%00&y=" + "a" * 2000),
             ("DELETE", "/health"), ("GET", "/v1/../etc/passwd"), ("GET", "/v1/chat/completions/x"),
             ("POST", "/metrics"), ("GET", "/v1/%ff%fe"), ("OPTIONS", route), ("GET", "/v1/responses/x"),
             ("DELETE", "/v1/responses/%00"), ("POST", "/v1/messages/count_tokens")]
        )  # fmt: skip
        return {"method": method, "path": path, "headers": headers, "content": b"{}"}
    if rng.random() < 0.1:
        headers = rng.choice(
            [{"content-type": "text/plain"}, {"content-encoding": "gzip"}, {"authorization": "Bearer \x7f"},
             {"x-forwarded-for": "::1" * 100}]
        )  # fmt: skip
    return {"method": "POST", "path": route, "headers": headers, "content": content}


# -- the properties ----------------------------------------------------------------------------
def _check_error_body(text: str, status: int, case: dict) -> None:
    body = json.loads(text)
    error = body["error"]
    if case["path"].startswith("/v1/messages"):  # Anthropic's shape
        assert body["type"] == "error" and set(error) == {"type", "message"}, (status, text, case)
    else:
        assert set(error) == {"message", "type", "param", "code"}, (status, text, case)
    assert "Traceback" not in error["message"] and "/work/" not in error["message"], (text, case)
    assert ".py" not in error["message"] or "faulty" in error["message"], (text, case)


def _check_stream(text: str, case: dict) -> None:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if case["path"] in LAST_EVENT:
        payloads = [json.loads(event) for event in events]
        assert payloads and payloads[-1]["type"] in (LAST_EVENT[case["path"]], "error"), (text[-500:], case)
        for payload in payloads:
            assert payload["type"] != "response.failed" and (payload.get("error") or {}).get("type") != "api_error", (payload, case)
        return
    assert events and events[-1] == "[DONE]", (text[-500:], case)
    for event in events[:-1]:
        payload = json.loads(event)
        if "error" in payload:
            assert payload["error"]["type"] != "server_error", (event, case)
            _check_error_body(event, 400, case)


async def _send(client: httpx.AsyncClient, case: dict, failures: list) -> int | None:
    try:
        r = await client.request(case["method"], case["path"], headers=case["headers"], content=case["content"])
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError) as e:
        # A body refused before it was read can close the connection under the sender.
        if len(case["content"]) <= BODY_LIMIT:
            failures.append((case, repr(e)))
        return None
    try:
        assert r.status_code < 500, (r.status_code, r.text[:500], case)
        if r.status_code >= 400 and r.status_code not in (404, 405) or r.headers.get("content-type") == "application/json":
            if r.status_code >= 400:
                _check_error_body(r.text, r.status_code, case)
        if r.status_code == 200 and r.headers.get("content-type", "").startswith("text/event-stream"):
            _check_stream(r.text, case)
    except (AssertionError, ValueError, KeyError) as e:
        failures.append((case, repr(e)[:300]))
    return r.status_code


def test_fuzzed_requests_get_4xx_and_leave_the_server_clean(server):
    rng = random.Random(SEED)
    cases = _edge_cases(rng) + [_case(rng) for _ in range(CASES)]
    failures: list = []

    async def run_all() -> list:
        statuses = []
        queue = list(enumerate(cases))
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def worker():
                while queue:
                    _, case = queue.pop()
                    statuses.append(await _send(client, case, failures))

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return statuses

    statuses = asyncio.run(run_all())
    shown = [(reason, case["path"], case["content"][:300]) for case, reason in failures[:3]]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed (seed {SEED}); first: {shown}"
    assert statuses.count(200) > len(cases) // 10  # the valid share really generated
    assert sum(1 for s in statuses if s and 400 <= s < 500) > len(cases) // 3

    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    deadline = time.monotonic() + 30
    names = ("max_serve_num_requests_in_flight", "max_serve_num_requests_running", "max_serve_kv_cache_pages_in_use")
    while any(server.metric(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [server.metric(n) for n in names] == [0, 0, 0]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="5' not in metrics
    assert "internal error" not in server.log()


def test_the_reported_cases_get_4xx_at_once(server):
    """Issue 15's findings: 100,000 nested brackets (was a 500), a 20 MB body (was read and
    tokenized for 33 s), a prompt far over the context (now refused before tokenizing)."""
    url = f"{server.url}/v1/completions"
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(url, content=deep, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"

    # A 20 MB body sent in chunks: the 413 arrives while it is still being sent.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent, answer = 0, b""
        chunk = b"x" * 65536
        while sent < 20 * 2**20 and not answer:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if select.select([sock], [], [], 0.05)[0]:
                answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < 4 * BODY_LIMIT, sent

    r = httpx.post(url, json={"model": MODEL, "prompt": "word " * 1000}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
