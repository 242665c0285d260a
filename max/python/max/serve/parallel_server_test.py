"""`serve` with several processes, on the CPU: two data-parallel replicas behind one
endpoint give one replica's greedy outputs for 64 concurrent requests and share the load,
and a replica that dies is restarted while the other serves; a tensor-parallel server whose
rank dies fails its requests, restarts the engine with all its ranks, and exits non-zero
once no restart is left."""

import asyncio
import os
import signal
import time

import httpx
import openai
import pytest

from max.testing.server_process import ServerProcess, spawned_children
from max.testing.tiny_checkpoints import write_tiny_checkpoint
from max.testing.tiny_configs import TINY_CONFIGS

MODEL = "tiny"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_CONFIGS["llama3"], seed=7)


def _serve(path, *flags) -> ServerProcess:
    # float32 pinned: `auto` measures the CPU in each process, and under load (CI) two
    # servers may choose differently (float32, bfloat16), which changes a tiny model's tokens.
    return ServerProcess(
        "--model-path", str(path), "--served-model-name", MODEL, "--skip-tokenizer-init",
        "--max-length", "128", "--kv-cache-page-size", "8", "--quantization-encoding", "float32", *flags,
    )  # fmt: skip


async def _complete_all(url: str, prompts: list[list[int]]) -> list[list[int]]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def one(prompt):
        r = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        return r.choices[0].model_extra["token_ids"]

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


def test_two_replicas_answer_like_one(checkpoint):
    prompts = [[1, 100 + i, 200 + 3 * i, 7 * i % 50 + 1] for i in range(64)]
    with _serve(checkpoint) as one:
        expected = asyncio.run(_complete_all(one.url, prompts))
    with _serve(checkpoint, "--data-parallel-size", "2", "--engine-restart-backoff", "0.2") as two:
        got = asyncio.run(_complete_all(two.url, prompts))
        metrics = httpx.get(f"{two.url}/metrics", timeout=10).text
        # One replica dies: the other answers everything while it restarts.
        os.kill(two.engine_pids()[1], signal.SIGKILL)
        _wait_for(lambda: httpx.get(f"{two.url}/health").json()["status"] == "degraded")
        assert asyncio.run(_complete_all(two.url, prompts[:4])) == expected[:4]
        _wait_for(lambda: httpx.get(f"{two.url}/health").json()["status"] == "ok")
        after = httpx.get(f"{two.url}/metrics", timeout=10).text
    assert got == expected and all(len(t) == 8 for t in got)
    routed = [float(line.split()[1]) for line in metrics.splitlines() if line.startswith("max_serve_replica_requests_total{")]
    assert len(routed) == 2 and sum(routed) == 64 and min(routed) >= 16, routed
    assert 'max_serve_kv_cache_pages_capacity{replica="1"}' in metrics
    restarts = [float(line.split()[1]) for line in after.splitlines() if line.startswith("max_serve_engine_restarts_total{")]
    assert sorted(restarts) == [0, 1], restarts  # only the replica that died


def _wait_for(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_dead_tensor_parallel_rank_restarts_the_engine_then_stops_the_server(checkpoint):
    server = _serve(checkpoint, "--tensor-parallel-size", "2", "--engine-max-restarts", "1", "--engine-restart-backoff", "0.2")
    try:
        assert asyncio.run(_complete_all(server.url, [[1, 2, 3]]))[0]
        for attempt in range(2):
            # The server's engine process started the other rank: the server's grandchild.
            (engine,) = server.engine_pids()
            (rank,) = spawned_children(engine)
            os.kill(rank, signal.SIGKILL)
            r = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4},
                timeout=60,
            )
            assert r.status_code >= 500 and "error" in r.json(), r.text
            if attempt == 0:  # restarted with both ranks
                _wait_for(lambda: server.metric("max_serve_engine_restarts_total") == 1)
                assert len(spawned_children(server.engine_pids()[0])) == 1
                assert asyncio.run(_complete_all(server.url, [[1, 2, 3]]))[0]
        # No restart left: the server exits non-zero.
        _wait_for(lambda: server.process.poll() is not None)
        assert server.process.returncode == 1, server.log()
        log = server.log()
        assert "tensor-parallel rank 1 exited" in log, log[-4000:]
    finally:
        server.stop()
