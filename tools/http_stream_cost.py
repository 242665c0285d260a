"""Measurement aid (not part of the product): the HTTP layer's CPU cost per streamed chunk.

A child process serves the real app (uvicorn, Starlette, our handlers) over a stand-in
engine (`FakeEngine`) that yields one token every `--delay` seconds per request; this
process streams `--concurrency` requests of `--tokens` tokens at a time (aiohttp,
/v1/completions with token-id prompts) and counts chunks and tokens. The server's CPU
seconds (from /proc) over chunks sent is what one chunk costs the HTTP process, the part of
`serve` that limits streaming at high concurrency. The stand-in engine's own cost (an async
generator per request) is included; the real engine client's routing is not.

    PYTHONPATH=max/python python3 tools/http_stream_cost.py --concurrency 64 --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time


def _serve(port: int, delay: float, ready) -> None:
    import uvicorn

    from max.serve.api_server import ServerState, create_app
    from max.testing.fake_engine import FakeEngine

    state = ServerState(tokenizer=None, engine=FakeEngine(delay=delay), served_model_name="fake", max_seq_len=1 << 20, vocab_size=100)
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    ready.set()
    server.run()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stream_all(url: str, requests: int, concurrency: int, tokens: int) -> tuple[int, int]:
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    body = {"model": "fake", "prompt": [1, 2, 3], "max_tokens": tokens, "stream": True, "ignore_eos": True}
    counts = [0, 0]  # chunks, tokens

    async def one(session) -> None:
        async with limit, session.post(url, json={**body, "return_token_ids": True}) as response:
            pending = b""
            async for data in response.content.iter_any():
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.startswith(b"data: {"):
                        event = json.loads(line[6:])
                        ids = sum(len(c.get("token_ids") or []) for c in event.get("choices", []))
                        if ids:
                            counts[0] += 1
                            counts[1] += ids

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session) for _ in range(requests)))
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds between a request's tokens")
    args = parser.parse_args(argv)
    from max.testing.server_process import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, args.delay, ready), daemon=True)
    server.start()
    ready.wait(60)
    url = f"http://127.0.0.1:{port}/v1/completions"
    deadline = time.monotonic() + 60
    while True:  # the first request also warms the handlers up
        try:
            asyncio.run(_stream_all(url, 1, 1, 2))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
    chunks, tokens = asyncio.run(_stream_all(url, args.requests, args.concurrency, args.tokens))
    cpu, wall = _cpu_seconds(server.pid) - cpu0, time.perf_counter() - t0
    server.terminate()
    print(
        f"{chunks} chunks, {tokens} tokens in {wall:.2f} s: server CPU {cpu:.2f} s, "
        f"{1e6 * cpu / max(chunks, 1):.1f} us per chunk, {1e6 * cpu / max(tokens, 1):.1f} us per token, "
        f"{tokens / max(chunks, 1):.2f} tokens per chunk, {tokens / wall:.0f} tokens/s"
    )
    return 0


if __name__ == "__main__":
    from max.entrypoints.process_setup import run_main

    sys.exit(run_main(main))
