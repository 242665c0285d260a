"""Serving benchmark: an OpenAI-compatible server under a stream of requests, measured as
`vllm bench serve` and `max benchmark` measure it.

Sends `--num-prompts` streaming requests of a workload (`--dataset random|sharegpt`) to
`--endpoint` (/v1/completions or /v1/chat/completions), arriving as a Poisson process of
`--request-rate` requests/s (`inf`: all at once), at most `--max-concurrency` in flight.
Reports successful and failed requests, duration, request and token throughputs, and
TTFT, TPOT, ITL and end-to-end latency (mean, median, percentiles) as a table, and as JSON
with `--result-file`. Random prompts are token ids, so neither side needs a tokenizer.

Without `--base-url` it starts `serve` itself; flags it does not know are passed to
`serve` (e.g. --devices gpu --load-format dummy --skip-tokenizer-init --max-length 4096):

    ./bazelw run //max/python/max/benchmark:benchmark_serving -- \\
        --model-path max/python/max/benchmark/configs/Llama-3.1-8B --load-format dummy \\
        --skip-tokenizer-init --devices gpu --num-prompts 200 --max-concurrency 64
    ./bazelw run //max/python/max/benchmark:benchmark_serving -- --base-url http://127.0.0.1:8000 \\
        --model meta-llama/Llama-3.1-8B-Instruct --random-vocab-size 128000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np

from max.benchmark.benchmark_dataset import SampleRequest, add_dataset_args, build_requests
from max.benchmark.serving_metrics import RequestResult, compute_metrics, format_report
from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_api_key_arg, add_result_file_arg
from max.errors import MaxError

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


def warmup_variant(request: SampleRequest) -> SampleRequest:
    """A warm-up request of the same lengths whose prompt starts differently, so that the
    server's prefix cache holds nothing the measured requests could reuse."""
    if isinstance(request.prompt, str):
        prompt: str | list[int] = "Warm-up. " + request.prompt
    else:
        prompt = request.prompt[::-1] if len(set(request.prompt)) > 1 else [0] * len(request.prompt)
    return dataclasses.replace(request, prompt=prompt)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags (unknown flags go to `serve` when it is started here)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any other flag is passed to `serve` when no --base-url is given.",
        allow_abbrev=False,  # an abbreviation must not swallow a flag meant for `serve`
    )
    add_dataset_args(parser)
    s = parser.add_argument_group("server")
    s.add_argument("--base-url", "--url", dest="base_url", help="a running server (default: start `serve`)")
    s.add_argument("--endpoint", choices=ENDPOINTS, default="/v1/completions")
    s.add_argument(
        "--model-path",
        "--model",
        dest="model_path",
        help="the model: passed to `serve` when started here; its config gives the random "
        "vocabulary size; with --base-url, the model name in requests",
    )
    s.add_argument("--served-model-name", help="model name in requests (default: the server's first model)")
    s.add_argument(
        "--tokenizer",
        metavar="PATH_OR_REPO",
        help="tokenizer for ShareGPT lengths and chat text (default: the model's, if it has one); "
        "passed to `serve` too when started here",
    )
    add_api_key_arg(s, help="bearer token (and serve's --api-key)")
    s.add_argument("--server-startup-timeout", type=float, default=1800.0, help="seconds to wait for `serve`")
    s.add_argument(
        "--token-id-prompts",
        action="store_true",
        help="send ShareGPT prompts as token ids (tokenized here); on by itself when `serve` "
        "is started here with --skip-tokenizer-init",
    )
    g = parser.add_argument_group("load")
    g.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals (default inf: all at once)")
    g.add_argument("--max-concurrency", type=int, help="requests in flight at most (default: no limit)")
    g.add_argument("--num-warmups", type=int, default=1, help="requests sent before measuring (default 1)")
    g.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate exactly the asked output length (default: on for random, off for sharegpt)",
    )
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    o = parser.add_argument_group("output")
    add_result_file_arg(o)
    o.add_argument("--metric-percentiles", default="99", help="comma-separated percentiles (default 99)")
    o.add_argument("--save-detailed", action="store_true", help="per-request lengths and timings in the JSON")
    o.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    return parser


# -- the client ---------------------------------------------------------------------------
def _payload(request: SampleRequest, model: str, chat: bool, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        body["messages"] = [{"role": "user", "content": request.prompt}]
        body["max_completion_tokens"] = request.output_len
    else:
        body["prompt"] = request.prompt
        body["max_tokens"] = request.output_len
    if args.ignore_eos:
        body["ignore_eos"] = True
    return body


def _chunk_content(event: dict[str, Any], chat: bool) -> tuple[bool, int]:
    """(whether a streamed event carries output, how many token ids it lists)."""
    has_output, ids = False, 0
    for choice in event.get("choices") or []:
        if chat:
            delta = choice.get("delta") or {}
            has_output |= bool(delta.get("content") or delta.get("reasoning_content"))
        else:
            has_output |= bool(choice.get("text"))
        token_ids = choice.get("token_ids")
        if token_ids:
            has_output = True
            ids += len(token_ids)
    return has_output, ids


async def send_request(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], request: SampleRequest, chat: bool
) -> RequestResult:
    """Sends one streaming request and times each chunk that carries output."""
    result = RequestResult(success=False, prompt_len=request.prompt_len, sent_at=time.time())
    start = last = time.perf_counter()
    first_seen, chunks, ids, usage = False, 0, 0, None
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:1000]}"
                return result
            pending = b""
            async for data in response.content.iter_any():
                now = time.perf_counter()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    text = line[5:].strip()
                    if text == b"[DONE]":
                        continue
                    event = json.loads(text)
                    if "error" in event:
                        result.error = json.dumps(event["error"])[:1000]
                        return result
                    if event.get("usage"):
                        usage = event["usage"]
                    has_output, n = _chunk_content(event, chat)
                    if not has_output:
                        continue
                    if not first_seen:
                        result.ttft = now - start
                        first_seen = True
                    else:
                        result.itl.append(now - last)
                    last = now
                    chunks += 1
                    ids += n
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.latency = time.perf_counter() - start
    if not first_seen:
        result.error = "the response streamed no output"
        return result
    if usage:
        result.output_tokens = int(usage.get("completion_tokens") or 0)
        result.prompt_len = int(usage.get("prompt_tokens") or request.prompt_len)
    else:  # a server that sends no usage: the ids it listed, else one token per chunk
        result.output_tokens = ids or chunks
    result.success = True
    return result


async def _arrivals(count: int, rate: float, rng: np.random.Generator):
    """Yields 0..count-1 at Poisson arrival times of `rate` per second (inf: at once)."""
    start = time.perf_counter()
    target = 0.0
    for i in range(count):
        if i and math.isfinite(rate):
            target += rng.exponential(1.0 / rate)
            delay = start + target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        yield i


async def run_benchmark(
    base_url: str, model: str, requests: list[SampleRequest], args: argparse.Namespace
) -> tuple[list[RequestResult], float]:
    """Warm-up requests, then the measured run; returns per-request results and duration."""
    from tqdm import tqdm

    chat = args.endpoint == "/v1/chat/completions"
    url = base_url.rstrip("/") + args.endpoint
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limit = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    timeout = aiohttp.ClientTimeout(total=None, sock_read=3600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:

        async def one(request: SampleRequest) -> RequestResult:
            body = _payload(request, model, chat, args)
            if limit is None:
                return await send_request(session, url, body, headers, request, chat)
            async with limit:
                return await send_request(session, url, body, headers, request, chat)

        if args.num_warmups > 0:
            warmups = [warmup_variant(requests[i % len(requests)]) for i in range(args.num_warmups)]
            results = await asyncio.gather(*(one(r) for r in warmups))
            failed = next((r for r in results if not r.success), None)
            if failed is not None:
                raise MaxError(f"the warm-up request failed: {failed.error}")
        progress = tqdm(total=len(requests), disable=args.disable_tqdm, file=sys.stderr, desc="requests")

        async def tracked(request: SampleRequest) -> RequestResult:
            result = await one(request)
            progress.update(1)
            return result

        rng = np.random.default_rng(args.seed)
        tasks = []
        start = time.perf_counter()
        async for i in _arrivals(len(requests), args.request_rate, rng):
            tasks.append(asyncio.create_task(tracked(requests[i])))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        progress.close()
    return list(results), duration


# -- set-up -------------------------------------------------------------------------------
def _load_tokenizer(spec: str | None, model_path: str | None, needed: bool):
    """The client's tokenizer: --tokenizer, else the model's own when `needed` (or None)."""
    from max.pipelines.lib import TextTokenizer
    from max.pipelines.lib.hub.model_source import (
        has_tokenizer_files,
        resolve_model_source,
        resolve_tokenizer_source,
    )

    if spec is not None:
        return TextTokenizer.from_source(resolve_tokenizer_source(spec))
    if not needed:
        return None
    try:
        source = resolve_model_source(model_path, load_format="dummy")
    except MaxError:
        return None
    if source.gguf_file is None and not has_tokenizer_files(source.directory):
        return None
    return TextTokenizer.from_source(source)


def _model_vocab_size(model_path: str | None) -> int | None:
    """The vocabulary size in the model's config (None if the model cannot be found here)."""
    from max.pipelines.lib.hub.hf_config import load_hf_config
    from max.pipelines.lib.hub.model_source import resolve_model_source

    try:
        config = load_hf_config(resolve_model_source(model_path, load_format="dummy"))
    except MaxError:
        return None
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    return int(vocab) if vocab else None


def _served_model(base_url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def _serve_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The flags of the `serve` this benchmark starts."""
    out = list(extra)
    if args.model_path is not None:
        out += ["--model-path", args.model_path]
    if args.tokenizer is not None and "--skip-tokenizer-init" not in extra:
        out += ["--tokenizer", args.tokenizer]
    if args.api_key:
        out += ["--api-key", args.api_key]
    if args.served_model_name:
        out += ["--served-model-name", args.served_model_name]
    return [*out, "--seed", str(args.seed)]  # the seed of dummy weights too


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the report; returns 0 if any request succeeded."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Online by default like `serve` (HF_HUB_OFFLINE=1 keeps to the local cache).
    return run_main(_run, args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra and args.base_url:
        raise MaxError(f"unknown flags {' '.join(extra)} (flags for `serve` apply only without --base-url)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise MaxError("--max-concurrency must be at least 1")
    if args.request_rate <= 0:
        raise MaxError("--request-rate must be positive (inf: all at once)")
    percentiles = tuple(float(p) for p in args.metric_percentiles.split(",") if p.strip())
    if args.ignore_eos is None:
        args.ignore_eos = args.dataset == "random"
    chat = args.endpoint == "/v1/chat/completions"
    no_server_tokenizer = args.base_url is None and "--skip-tokenizer-init" in extra
    token_ids = not chat and (args.token_id_prompts or no_server_tokenizer)
    if chat and no_server_tokenizer:
        raise MaxError("a server started with --skip-tokenizer-init serves /v1/completions only")
    # The model: local to this machine when we start the server (None: the embedded default).
    model_here = args.model_path is not None or args.base_url is None
    needs_tokenizer = args.dataset == "sharegpt" or chat
    tokenizer = _load_tokenizer(args.tokenizer, args.model_path, needs_tokenizer and model_here)
    if token_ids and args.dataset == "sharegpt" and tokenizer is None:
        raise MaxError("ShareGPT prompts as token ids need a tokenizer: pass --tokenizer")
    if args.dataset == "sharegpt" and tokenizer is None:
        print("note: no tokenizer (--tokenizer): ShareGPT lengths are estimated at 4 characters a token", file=sys.stderr)
    vocab = None
    if args.dataset == "random" and args.random_vocab_size is None and model_here:
        vocab = _model_vocab_size(args.model_path)
    requests = build_requests(args, vocab, tokenizer, text=chat)
    if token_ids and args.dataset == "sharegpt":
        for r in requests:
            r.prompt = tokenizer.encode(r.prompt)
            r.prompt_len = len(r.prompt)

    server = None
    base_url = args.base_url
    if base_url is None:
        from max.testing.server_process import ServerProcess

        print("starting serve ...", file=sys.stderr)
        try:
            server = ServerProcess(*_serve_args(args, extra), startup_timeout=args.server_startup_timeout)
        except RuntimeError as e:
            raise MaxError(f"`serve` did not start: {e}") from None
        base_url = server.url
    try:
        if args.served_model_name:
            model = args.served_model_name
        elif args.base_url and args.model_path:
            model = args.model_path
        else:
            model = _served_model(base_url, args.api_key)
        results, duration = asyncio.run(run_benchmark(base_url, model, requests, args))
    finally:
        if server is not None:
            server.stop()
    metrics = compute_metrics(results, duration, percentiles)
    print(format_report(metrics))
    errors = [r.error for r in results if not r.success]
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    if args.result_file:
        record: dict[str, Any] = {
            "date": datetime.now().isoformat(timespec="seconds"),
            "base_url": args.base_url or "(started by the benchmark)",
            "endpoint": args.endpoint,
            "model": model,
            "serve_args": extra if args.base_url is None else None,
            "dataset": args.dataset,
            "num_prompts": len(requests),
            "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
            "max_concurrency": args.max_concurrency,
            "ignore_eos": args.ignore_eos,
            "seed": args.seed,
            **metrics.to_json(),
        }
        if args.save_detailed:
            record["requests"] = [asdict(r) for r in results]
        with open(args.result_file, "w") as f:
            json.dump(record, f, indent=2)
    return 0 if metrics.completed else 1


if __name__ == "__main__":
    sys.exit(main())
