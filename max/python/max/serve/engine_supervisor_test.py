"""Engine supervision through the real server, on a tiny checkpoint served by a test
architecture whose steps fail on chosen token ids: a killed engine fails its requests at
once and is restarted (then, with no restart left, the server exits 1); a poisoned request
is failed and dropped while the engine goes on; an engine that cannot step any more is
restarted; SIGTERM drains."""

import json
import os
import signal
import threading
import time

import httpx
import pytest

from max.testing.server_process import ServerProcess
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

MODEL = "tiny"
POISON = 77  # a step whose tokens include it raises
BREAK = 78  # after a step sees it, every step raises: the engine is broken

# A custom architecture (loaded with --custom-architectures) standing in for a model bug.
FAULTY_LLAMA = f'''
"""LlamaForCausalLM whose steps fail on chosen token ids, and may be slowed down."""

import dataclasses
import os
import time

from max.pipelines.architectures.llama3 import llama3_arch
from max.pipelines.architectures.llama3.model import Llama3Model

_broken = []
_delay = float(os.environ.get("FAULTY_LLAMA_STEP_DELAY", "0"))


class FaultyLlama(Llama3Model):
    def execute(self, inputs):
        tokens = inputs.tokens.tolist()
        if {BREAK} in tokens:
            _broken.append(True)
        if _broken or {POISON} in tokens:
            raise RuntimeError("step failed in /srv/secret/faulty_llama.py")
        time.sleep(_delay)
        return super().execute(inputs)


ARCHITECTURES = [dataclasses.replace(llama3_arch, pipeline_model=FaultyLlama)]
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    write_tiny_checkpoint(root / "ckpt", TINY_CONFIGS["llama3"], seed=3)
    (root / "faulty_llama.py").write_text(FAULTY_LLAMA)
    return root


def _serve(root, *flags, env=None) -> ServerProcess:
    return ServerProcess(
        "--model-path", str(root / "ckpt"), "--custom-architectures", str(root / "faulty_llama.py"),
        "--served-model-name", MODEL, "--skip-tokenizer-init", "--max-length", "256",
        "--kv-cache-page-size", "8", "--engine-restart-backoff", "0.2", *flags, env=env,
    )  # fmt: skip


def _complete(server, prompt, max_tokens=4, timeout=60) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=timeout)


def _wait_for(condition, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _health(server) -> httpx.Response:
    return httpx.get(f"{server.url}/health", timeout=10)


def _events(response):
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def test_poisoned_request_is_dropped_and_a_broken_engine_restarted(model_dir):
    with _serve(model_dir) as server:
        r = _complete(server, [1, POISON, 3])
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["type"] == "server_error" and "dropped" in error["message"]
        assert "/srv/secret" not in r.text and "Traceback" not in r.text
        # The engine goes on (a probe request passed): no restart, the next request works.
        assert _complete(server, [1, 2, 3]).status_code == 200
        assert server.metric("max_serve_engine_restarts_total") == 0
        assert server.metric("max_serve_kv_cache_pages_in_use") == 0

        assert _complete(server, [1, BREAK]).status_code == 500  # the probe fails too
        _wait_for(lambda: server.metric("max_serve_engine_restarts_total") == 1, what="a restart")
        assert _health(server).json() == {"status": "ok"}
        assert _complete(server, [1, 2, 3]).json()["choices"][0]["token_ids"]
        log = server.log()
        assert "does not run steps any more" in log and "restarted (attempt 1 of 3)" in log


def test_killed_engine_fails_requests_restarts_then_gives_up(model_dir):
    server = _serve(model_dir, "--engine-max-restarts", "1", env={"FAULTY_LLAMA_STEP_DELAY": "0.02"})
    try:
        body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
            events = _events(r)
            next(events)
            (engine,) = server.engine_pids()
            os.kill(engine, signal.SIGKILL)
            killed = time.monotonic()
            rest = list(events)
        assert time.monotonic() - killed < 10  # ended at once, not at max_tokens
        assert "error" in rest[-1] and rest[-1]["error"]["type"] == "server_error", rest[-1]
        r = _health(server)
        if r.status_code == 503:  # unless the restart was quicker than this check
            assert "exit code -9" in r.json()["detail"]
        _wait_for(lambda: _health(server).status_code == 200, what="the restarted engine")
        assert _complete(server, [4, 5, 6]).status_code == 200
        assert server.metric("max_serve_engine_restarts_total") == 1

        (engine,) = server.engine_pids()
        os.kill(engine, signal.SIGKILL)  # no restart left: the server exits non-zero
        _wait_for(lambda: server.process.poll() is not None, what="the server to exit")
        assert server.process.returncode == 1, server.log()
        assert "giving up" in server.log()
    finally:
        server.stop()


def test_sigterm_drains_in_flight_requests_then_exits_0(model_dir):
    server = _serve(model_dir, env={"FAULTY_LLAMA_STEP_DELAY": "0.05"})
    try:
        body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 40, "ignore_eos": True, "stream": True}
        got: list[dict] = []

        def stream() -> None:
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
                got.extend(_events(r))

        reader = threading.Thread(target=stream)
        reader.start()
        _wait_for(lambda: server.metric("max_serve_generation_tokens_total") > 0, what="the first token")
        server.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: _health(server).status_code == 503, timeout=10, what="draining")
        assert _health(server).json()["status"] == "draining"
        r = _complete(server, [1, 2])
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        reader.join(60)
        assert sum(len(e["choices"][0]["token_ids"]) for e in got if e.get("choices")) == 40
        assert got[-1]["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(30) == 0
        assert "drained: every request was answered" in server.log()
    finally:
        server.stop()
