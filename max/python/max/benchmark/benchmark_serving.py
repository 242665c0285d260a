"""Serving benchmark: requests/s, output tokens/s and time to first token of a running
OpenAI-compatible server, at several concurrency levels.

Starts `pipelines serve` itself (or measures `--url` of one already running), sends
`--num-requests` streaming chat requests per concurrency level with a fixed number of
output tokens (EOS ignored), and prints a Markdown table.

    ./bazelw run //max/python/max/benchmark:benchmark_serving -- --concurrency 1 16 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import openai

from max.benchmark.benchmark_generate import PROMPTS


@dataclass
class LevelResult:
    """Measurements at one concurrency level."""

    concurrency: int
    requests: int
    seconds: float
    output_tokens: int
    mean_ttft_ms: float
    p99_ttft_ms: float
    mean_itl_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _one(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return (first or end) - start, end - start, tokens


async def run_level(url: str, model: str, concurrency: int, num_requests: int, max_tokens: int) -> LevelResult:
    """Sends `num_requests` requests with at most `concurrency` in flight."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
    semaphore = asyncio.Semaphore(concurrency)

    async def limited(i: int):
        async with semaphore:
            return await _one(client, model, PROMPTS[i % len(PROMPTS)], max_tokens)

    start = time.perf_counter()
    results = await asyncio.gather(*(limited(i) for i in range(num_requests)))
    seconds = time.perf_counter() - start
    await client.close()
    ttfts = [r[0] * 1000 for r in results]
    itls = [(r[1] - r[0]) * 1000 / max(r[2] - 1, 1) for r in results]
    return LevelResult(
        concurrency=concurrency,
        requests=num_requests,
        seconds=seconds,
        output_tokens=sum(r[2] for r in results),
        mean_ttft_ms=statistics.mean(ttfts),
        p99_ttft_ms=_percentile(ttfts, 99),
        mean_itl_ms=statistics.mean(itls),
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the levels and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", help="served model name (default: ask /v1/models)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--num-requests", type=int, help="requests per level (default: 2 x concurrency, at least 8)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    args, serve_args = parser.parse_known_args(argv)
    cwd = os.environ.get("BUILD_WORKING_DIRECTORY")
    if cwd:
        os.chdir(cwd)
    server = None
    url = args.url
    if url is None:
        from max.testing.server_process import ServerProcess

        server = ServerProcess(*(serve_args or ["--max-length", "2048"]))
        url = server.url
    try:
        model = args.model or openai.OpenAI(base_url=f"{url}/v1", api_key="unused").models.list().data[0].id
        asyncio.run(run_level(url, model, 2, 2, 8))  # warm-up
        results = []
        for c in args.concurrency:
            n = args.num_requests or max(8, 2 * c)
            results.append(asyncio.run(run_level(url, model, c, n, args.max_tokens)))
            print(f"concurrency {c}: done", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(f"model: {model}; {args.max_tokens} output tokens per request")
    print("| concurrency | requests | requests/s | output tokens/s | mean TTFT | p99 TTFT | mean ITL |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.concurrency} | {r.requests} | {r.requests_per_second:.2f} | {r.output_tokens_per_second:.1f} | "
            f"{r.mean_ttft_ms:.0f} ms | {r.p99_ttft_ms:.0f} ms | {r.mean_itl_ms:.0f} ms |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
