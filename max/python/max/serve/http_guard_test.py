"""The HTTP layer's limits and security on an in-process app with a fake engine: API key,
CORS, admission (429), draining (503), deadlines (408), body size (413), JSON depth and
prompt length (400), error bodies without internals, and the metrics of all that."""

import json
import time

from starlette.testclient import TestClient

from max.serve.api_server import ServerState, create_app
from max.serve.request_limits import ServerLimits, json_depth
from max.testing.fake_engine import FakeEngine

MODEL = "fake"
COMPLETION = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3}


def _serve(engine=None, **state_fields) -> tuple[TestClient, ServerState]:
    state = ServerState(
        tokenizer=None, engine=engine or FakeEngine(), served_model_name=MODEL, max_seq_len=64, vocab_size=100,
        **state_fields,
    )  # fmt: skip
    return TestClient(create_app(state), raise_server_exceptions=False), state


def _client(engine=None, **state_fields) -> TestClient:
    return _serve(engine, **state_fields)[0]


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def test_api_key_guards_every_route_but_health_and_metrics():
    client = _client(api_key="sekrit")
    for path in ("/v1/models", "/v1/nothing"):
        _error(client.get(path), 401, "invalid_api_key")
        _error(client.get(path, headers={"Authorization": "Bearer sekri"}), 401, "invalid_api_key")
    _error(client.post("/v1/completions", json=COMPLETION), 401, "invalid_api_key")
    ok = {"Authorization": "Bearer sekrit"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/completions", json=COMPLETION, headers=ok).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    guarded = _client(api_key="sekrit", metrics_need_api_key=True)
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers=ok).status_code == 200


def test_cors_is_off_unless_origins_are_named():
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = _client()
    assert "access-control-allow-origin" not in closed.options("/v1/completions", headers=preflight).headers
    assert "access-control-allow-origin" not in closed.get("/v1/models", headers={"Origin": "https://app.example"}).headers
    opened = _client(allowed_origins=["https://app.example"])
    r = opened.options("/v1/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = opened.options("/v1/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code == 400


def test_full_queue_gets_429_with_retry_after():
    client, app_state = _serve(limits=ServerLimits(max_queue_size=2))
    app_state.active_requests = 2
    r = client.post("/v1/completions", json=COMPLETION)
    assert _error(r, 429, "queue_full")["message"].count("--max-queue-size") == 1
    assert r.headers["retry-after"] == "1"
    app_state.active_requests = 0
    # n x prompts counts too: 3 sequences do not fit in 2.
    _error(client.post("/v1/completions", json={**COMPLETION, "n": 3}), 429, "queue_full")
    assert client.post("/v1/completions", json={**COMPLETION, "n": 2}).status_code == 200
    assert app_state.active_requests == 0 and app_state.metrics.in_flight == 0


def test_draining_refuses_new_requests_and_fails_health():
    client, state = _serve()
    state.draining = True
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    _error(r, 503, "shutting_down")
    assert "retry-after" in r.headers
    assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "draining"
    assert client.get("/v1/models").status_code == 200  # only generation is refused


def test_request_timeout_answers_408_and_aborts():
    engine = FakeEngine(delay=0.2)
    client, state = _serve(engine, limits=ServerLimits(request_timeout=0.3))
    started = time.monotonic()
    r = client.post("/v1/completions", json={**COMPLETION, "max_tokens": 50})
    assert "--request-timeout" in _error(r, 408, "request_timeout")["message"]
    assert time.monotonic() - started < 5
    assert engine.aborted and not engine.running
    with client.stream("POST", "/v1/completions", json={**COMPLETION, "max_tokens": 50, "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "request_timeout"
    assert not engine.running and state.active_requests == 0


def test_body_over_the_limit_gets_413():
    client = _client(limits=ServerLimits(max_body_bytes=1000))
    big = json.dumps({**COMPLETION, "prompt": "x" * 2000}).encode()
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert "--max-request-body-bytes" in _error(r, 413, "request_too_large")["message"]

    def chunks():  # no Content-Length: the limit is checked while reading
        yield b'{"model": "fake", "prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    _error(client.post("/v1/completions", content=chunks()), 413, "request_too_large")


def test_deep_json_and_long_prompts_get_400():
    client = _client(limits=ServerLimits(max_prompt_chars=100))
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "--max-json-depth" in _error(client.post("/v1/completions", content=deep), 400, "json_too_deep")["message"]
    nested = {"model": MODEL, "prompt": [1], "stream_options": {"a": [[[[[[[[[[[[1]]]]]]]]]]]]}}
    assert client.post("/v1/completions", json=nested).status_code == 200  # 14 levels: fine
    r = client.post("/v1/completions", json={**COMPLETION, "prompt": "y" * 101})
    assert "--max-prompt-chars" in _error(r, 400, "prompt_too_long")["message"]


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "\\"[["}]}') == 3
    assert json_depth(b'["\\\\", [[]]]') == 3
    assert json_depth(b"[" * 10) == 10 and json_depth(b"17") == 0


def test_server_errors_carry_no_paths_or_tracebacks():
    engine = FakeEngine()
    engine.error = 'RuntimeError at /opt/max/python/max/nn/attention.py:12\nTraceback (most recent call last):\n  File "x"'
    client = _client(engine)
    error = _error(client.post("/v1/completions", json=COMPLETION), 500, None)
    assert "/opt/" not in error["message"] and "Traceback" not in error["message"]
    assert error["message"] == "RuntimeError at <path>:12"
    engine.alive, engine.failure = False, "the tensor-parallel group failed: [/pytorch/gloo/pair.cc:534] closed"
    r = client.get("/health")
    assert r.status_code == 503 and "/pytorch" not in r.text and r.json()["status"] == "engine unavailable"
    r = client.post("/v1/completions", json=COMPLETION)
    assert _error(r, 503, "engine_unavailable") and "retry-after" in r.headers


def test_metrics_show_capacity_errors_and_engine_state():
    client = _client()
    client.post("/v1/completions", content=b"{")
    text = client.get("/metrics").text
    assert "# TYPE max_serve_kv_cache_pages_capacity gauge" in text
    assert "max_serve_kv_cache_pages_capacity 64" in text  # known before the first step
    assert 'max_serve_errors_total{code="invalid_json"} 1' in text
    assert "max_serve_engine_up 1" in text and "max_serve_engine_restarts_total 0" in text
