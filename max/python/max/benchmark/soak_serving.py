"""Soak benchmark: `serve` for N minutes under mixed load, checking that nothing leaks.

`--concurrency` clients send requests back to back for `--duration`. Each request is, by
the given fractions, malformed (bad JSON, wrong types, JSON nested 100,000 deep, a prompt
over the character limit, an unknown model: it must get a 4xx), a stream the client drops
after a few chunks (the server must abort it), or valid: a stream read to its end or a
plain request, on /v1/completions, /v1/chat/completions, /v1/messages (Anthropic's) or
/v1/responses, with random short prompts; `--tool-fraction` of the Messages and Responses
requests force a tool call (a grammar makes the model write one), so their streams carry call
arguments in fragments, some cut short by the token limit.

Reports valid requests answered and lost (not a well-formed 200), 5xx answers of any kind,
latency percentiles of the valid requests (end to end, and time to first token of streams),
the server's RSS (HTTP and engine processes) after the warm-up and at the end, and, after
the load stops and the server drains, the requests and KV pages still in use (must be 0).
Exits 1 if any valid request was lost, any answer was a 5xx or anything stayed in use.

Without `--base-url` it starts `serve` itself; flags it does not know are passed to `serve`:

    ./bazelw run //max/python/max/benchmark:soak_serving -- --duration 10m --concurrency 64
    ./bazelw run //max/python/max/benchmark:soak_serving -- --duration 2m --model-path M --devices gpu
    ./bazelw run //max/python/max/benchmark:soak_serving -- --base-url http://127.0.0.1:8000 --server-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_api_key_arg, add_result_file_arg
from max.errors import MaxError


@dataclass
class SoakStats:
    """What the clients saw."""

    valid_sent: int = 0
    valid_answered: int = 0
    valid_lost: int = 0
    malformed_sent: int = 0
    malformed_refused_4xx: int = 0
    dropped_streams: int = 0
    status_5xx: int = 0
    tool_requests_answered: int = 0  # valid requests that forced a tool call
    answered_with_calls: int = 0  # of those, answers holding a call (the token limit may cut it before)
    latencies: list[float] = field(default_factory=list)  # valid requests, end to end
    ttfts: list[float] = field(default_factory=list)  # valid streams
    first_errors: list[str] = field(default_factory=list)

    def lost(self, why: str) -> None:
        """Counts a valid request that did not get a well-formed answer."""
        self.valid_lost += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(why)


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1h' -> seconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([smh]?)\s*", text)
    if not m:
        raise MaxError(f"cannot read duration {text!r} (e.g. 90s, 10m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    """The soak's flags (unknown flags go to `serve` when it is started here)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any other flag is passed to `serve` when no --base-url is given.",
        allow_abbrev=False,
    )
    parser.add_argument("--duration", default="10m", help="how long to send load, e.g. 90s, 10m (default 10m)")
    parser.add_argument("--concurrency", type=int, default=64, help="clients sending at once (default 64)")
    parser.add_argument("--malformed-fraction", type=float, default=0.1, help="share of malformed requests")
    parser.add_argument("--drop-fraction", type=float, default=0.1, help="share of streams dropped mid-way")
    parser.add_argument("--tool-fraction", type=float, default=0.25,
                        help="share of Messages and Responses requests that force a tool call (default 0.25)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=32, help="most tokens a valid request asks for (default 32)")
    parser.add_argument("--warmup", default="30s", help="RSS baseline taken after this long (default 30s)")
    parser.add_argument("--token-ids-only", action="store_true", help="only token-id prompts on /v1/completions "
                        "(a server without a tokenizer)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", help="a running server (default: start `serve`)")
    parser.add_argument("--server-pid", type=int, help="with --base-url: the server's process id, for RSS")
    add_api_key_arg(parser)
    add_result_file_arg(parser)
    return parser


# -- requests ----------------------------------------------------------------------------
_WORDS = "the a server model token stream cache page engine request answer quick brown fox".split()


def _malformed(rng: random.Random, model: str) -> tuple[str, bytes]:
    """A request that must be refused with a 4xx."""
    path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/messages", "/v1/responses"])
    choices = [
        b"{not json",
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({"model": model, "prompt": 5, "messages": 5}).encode(),
        json.dumps({"model": "no-such-model", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}).encode(),
        json.dumps({"model": model, "prompt": "x", "messages": [{"role": "wizard"}], "temperature": "hot"}).encode(),
        json.dumps({"model": model, "prompt": "x" * 400_000, "messages": [{"role": "user", "content": "x" * 400_000}]}).encode(),
        b"\xff\xfe\x00garbage",
    ]
    return path, rng.choice(choices)


_TOOL = {"name": "look_up", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def _valid(rng: random.Random, model: str, args: argparse.Namespace, stream: bool) -> tuple[str, dict]:
    max_tokens = rng.randint(1, args.max_tokens)
    common = {"model": model, "max_tokens": max_tokens, "temperature": rng.choice([0, 0.7]), "stream": stream}
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 40)))
    if args.token_ids_only or rng.random() < 0.3:
        ids = [rng.randrange(1, 1000) for _ in range(rng.randint(3, 40))]
        return "/v1/completions", {**common, "prompt": ids}
    roll = rng.random()
    if roll < 0.4:
        return "/v1/completions", {**common, "prompt": text}
    tool = rng.random() < args.tool_fraction  # the answer is a call (forced), its arguments streamed
    if roll < 0.6:
        body = {**common, "temperature": common["temperature"] / 2, "messages": [{"role": "user", "content": text}]}
        if tool:
            body.update(tools=[{"name": _TOOL["name"], "input_schema": _TOOL["parameters"]}], tool_choice={"type": "any"})
        return "/v1/messages", body
    if roll < 0.8:
        body = {key: value for key, value in common.items() if key != "max_tokens"}
        body.update(max_output_tokens=max_tokens, input=text, store=rng.random() < 0.5)
        if tool:
            body.update(tools=[{"type": "function", **_TOOL}], tool_choice="required")
        return "/v1/responses", body
    return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": text}]}


# What ends a well-formed answer of each route: its non-streamed body's key, and the last
# event of a stream (OpenAI's routes: `data: [DONE]` after a chunk with a finish_reason).
_ANSWER_KEY = {"/v1/messages": "content", "/v1/responses": "output"}
_LAST_EVENT = {"/v1/messages": "message_stop", "/v1/responses": "response.completed"}
_ERROR_EVENTS = ("error", "response.failed")
_CALL_KINDS = ("tool_use", "function_call")  # a call's content block or output item


def _starts_call(event: dict) -> bool:
    """Whether a Messages or Responses stream event starts a tool call's block or item."""
    return (event.get("content_block") or event.get("item") or {}).get("type") in _CALL_KINDS


async def _send_valid(client: httpx.AsyncClient, path: str, body: dict, stats: SoakStats) -> None:
    stats.valid_sent += 1
    start = time.monotonic()
    try:
        if not body["stream"]:
            r = await client.post(path, json=body)
            if r.status_code >= 500:
                stats.status_5xx += 1
            if r.status_code != 200 or not r.json().get(_ANSWER_KEY.get(path, "choices")):
                stats.lost(f"{r.status_code}: {r.text[:200]}")
                return
            called = path in _ANSWER_KEY and any(part.get("type") in _CALL_KINDS for part in r.json()[_ANSWER_KEY[path]])
        else:
            async with client.stream("POST", path, json=body) as r:
                if r.status_code >= 500:
                    stats.status_5xx += 1
                if r.status_code != 200:
                    stats.lost(f"{r.status_code}: {(await r.aread())[:200]!r}")
                    return
                done = finished = called = False
                first_token: float | None = None
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    event = json.loads(line[6:])
                    if "error" in event or event.get("type") in _ERROR_EVENTS:
                        stats.lost(f"stream error: {event.get('error') or event}")
                        return
                    if path in _LAST_EVENT:  # Anthropic's and the Responses API's events
                        delta = event.get("delta")  # Anthropic's: an object; the Responses API's: text
                        text = delta.get("text") if isinstance(delta, dict) else delta
                        if first_token is None and text:
                            first_token = time.monotonic() - start
                        done = finished = event.get("type") == _LAST_EVENT[path]
                        called = called or _starts_call(event)
                        continue
                    for choice in event.get("choices", []):
                        if first_token is None and (choice.get("text") or choice.get("delta", {}).get("content")):
                            first_token = time.monotonic() - start
                        finished = finished or bool(choice.get("finish_reason"))
                if first_token is not None:
                    stats.ttfts.append(first_token)
                if not (done and finished):
                    stats.lost("stream ended without a finish_reason and [DONE] (or its API's last event)")
                    return
    except (httpx.HTTPError, ValueError) as e:
        stats.lost(f"{type(e).__name__}: {e}")
        return
    stats.valid_answered += 1
    stats.tool_requests_answered += "tools" in body
    stats.answered_with_calls += called
    stats.latencies.append(time.monotonic() - start)


async def _send_dropped(
    client: httpx.AsyncClient, path: str, body: dict, stats: SoakStats, chunks: int, max_tokens: int
) -> None:
    try:
        long = {**body, "stream": True, "max_tokens": max_tokens, "ignore_eos": True}
        async with client.stream("POST", path, json=long) as r:
            if r.status_code >= 500:
                stats.status_5xx += 1
            seen = 0
            async for _ in r.aiter_raw():
                seen += 1
                if seen >= chunks:
                    break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError:
        pass
    stats.dropped_streams += 1


async def _send_malformed(client: httpx.AsyncClient, path: str, raw: bytes, stats: SoakStats) -> None:
    stats.malformed_sent += 1
    try:
        r = await client.post(path, content=raw, headers={"content-type": "application/json"})
    except httpx.HTTPError:
        return
    if r.status_code >= 500:
        stats.status_5xx += 1
    elif 400 <= r.status_code < 500:
        stats.malformed_refused_4xx += 1


async def _client_loop(base_url: str, model: str, args, stats: SoakStats, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, headers=headers, limits=limits) as client:
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < args.malformed_fraction:
                await _send_malformed(client, *_malformed(rng, model), stats)
            elif roll < args.malformed_fraction + args.drop_fraction:
                path, body = _valid(rng, model, args, True)
                await _send_dropped(client, path, body, stats, rng.randint(1, 4), args.context_len // 2)
            else:
                path, body = _valid(rng, model, args, rng.random() < 0.5)
                await _send_valid(client, path, body, stats)


# -- the server's side -------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (engine processes, tensor-parallel ranks)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process tree, in MiB (None where /proc cannot tell)."""
    if pid is None:
        return None
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1) if total else None


def _metric(text: str, name: str) -> float:
    """Sum of a metric's series on a /metrics page."""
    values = [float(line.split()[-1]) for line in text.splitlines() if re.match(rf"{name}(\{{|\s)", line)]
    return sum(values)


async def _drained(base_url: str, headers: dict, timeout: float = 60.0) -> dict[str, float]:
    """Waits until nothing is in use; returns the last readings."""
    names = ("max_serve_num_requests_in_flight", "max_serve_num_requests_running", "max_serve_kv_cache_pages_in_use")
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        while True:
            text = (await client.get("/metrics")).text
            readings = {n: _metric(text, n) for n in names}
            server_5xx = sum(
                float(line.split()[-1]) for line in text.splitlines() if line.startswith('max_serve_requests_total{status="5')
            )
            if not any(readings.values()) or time.monotonic() > deadline:
                return {**readings, "server_counted_5xx": server_5xx}
            await asyncio.sleep(0.5)


async def soak(base_url: str, model: str, args, server_pid: int | None) -> dict[str, Any]:
    """Runs the load; returns the report."""
    stats = SoakStats()
    duration, warmup = parse_duration(args.duration), parse_duration(args.warmup)
    start = time.monotonic()
    stop_at = start + duration
    loops = [
        asyncio.create_task(_client_loop(base_url, model, args, stats, stop_at, args.seed * 1000 + i))
        for i in range(args.concurrency)
    ]
    rss_start = None
    samples = []
    next_sample = start + 10
    while not all(t.done() for t in loops):
        await asyncio.sleep(0.5)
        elapsed = time.monotonic() - start
        if rss_start is None and elapsed >= min(warmup, duration / 2):
            rss_start = _rss_mb(server_pid)
        if time.monotonic() >= next_sample:
            next_sample += 10
            samples.append((round(elapsed), _rss_mb(server_pid)))
            print(
                f"[{elapsed:6.0f} s] valid {stats.valid_answered}/{stats.valid_sent} lost {stats.valid_lost} "
                f"5xx {stats.status_5xx} dropped {stats.dropped_streams} malformed {stats.malformed_sent} "
                f"rss {samples[-1][1] or 0:.0f} MiB",
                file=sys.stderr,
            )
    await asyncio.gather(*loops)
    elapsed = time.monotonic() - start
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    after = await _drained(base_url, headers)
    rss_end = _rss_mb(server_pid)

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 4) if values else None

    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "valid_sent": stats.valid_sent,
        "valid_answered": stats.valid_answered,
        "valid_lost": stats.valid_lost,
        "malformed_sent": stats.malformed_sent,
        "malformed_refused_4xx": stats.malformed_refused_4xx,
        "dropped_streams": stats.dropped_streams,
        "tool_requests_answered": stats.tool_requests_answered,
        "answered_with_calls": stats.answered_with_calls,
        "status_5xx": stats.status_5xx,
        "requests_per_s": round((stats.valid_sent + stats.malformed_sent + stats.dropped_streams) / elapsed, 2),
        "latency_s": {f"p{q}": pct(stats.latencies, q) for q in (50, 90, 99)},
        "ttft_s": {f"p{q}": pct(stats.ttfts, q) for q in (50, 90, 99)},
        "rss_mib_after_warmup": rss_start,
        "rss_mib_end": rss_end,
        "rss_samples": samples,
        "after_drain": after,
        "first_errors": stats.first_errors,
    }
    return report


def _ok(report: dict[str, Any]) -> bool:
    after = report["after_drain"]
    leftovers = after["max_serve_num_requests_in_flight"] + after["max_serve_num_requests_running"]
    leftovers += after["max_serve_kv_cache_pages_in_use"]
    return report["valid_lost"] == 0 and report["status_5xx"] == 0 and leftovers == 0


def _format(report: dict[str, Any]) -> str:
    after = report["after_drain"]
    growth = None
    if report["rss_mib_after_warmup"] and report["rss_mib_end"]:
        growth = report["rss_mib_end"] - report["rss_mib_after_warmup"]
    lines = [
        "=" * 20 + " Soak Result " + "=" * 20,
        f"{'Duration (s):':<40}{report['duration_s']}",
        f"{'Concurrent clients:':<40}{report['concurrency']}",
        f"{'Valid requests answered / sent:':<40}{report['valid_answered']} / {report['valid_sent']}",
        f"{'Valid requests lost:':<40}{report['valid_lost']}",
        f"{'Malformed refused with 4xx / sent:':<40}{report['malformed_refused_4xx']} / {report['malformed_sent']}",
        f"{'Streams dropped by the client:':<40}{report['dropped_streams']}",
        f"{'Forced tool calls answered / held one:':<40}{report['tool_requests_answered']} / {report['answered_with_calls']}",
        f"{'5xx answers (client / server count):':<40}{report['status_5xx']} / {after['server_counted_5xx']:.0f}",
        f"{'Requests/s (all kinds):':<40}{report['requests_per_s']}",
        f"{'Latency p50 / p90 / p99 (s):':<40}{' / '.join(str(v) for v in report['latency_s'].values())}",
        f"{'TTFT p50 / p90 / p99 (s):':<40}{' / '.join(str(v) for v in report['ttft_s'].values())}",
        f"{'Server RSS after warm-up / end (MiB):':<40}{report['rss_mib_after_warmup']} / {report['rss_mib_end']}"
        + (f"  ({growth:+.0f})" if growth is not None else ""),
        f"{'After the drain: in flight, running:':<40}{after['max_serve_num_requests_in_flight']:.0f}, "
        f"{after['max_serve_num_requests_running']:.0f}",
        f"{'After the drain: KV pages in use:':<40}{after['max_serve_kv_cache_pages_in_use']:.0f}",
        "=" * 53,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the soak; prints the report; returns 0 if nothing was lost or leaked."""
    args, extra = build_parser().parse_known_args(argv)
    return run_main(_run, args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra and args.base_url:
        raise MaxError(f"unknown flags {' '.join(extra)} (flags for `serve` apply only without --base-url)")
    if args.concurrency < 1:
        raise MaxError("--concurrency must be at least 1")
    if not 0 <= args.malformed_fraction + args.drop_fraction <= 1:
        raise MaxError("--malformed-fraction plus --drop-fraction must be between 0 and 1")
    parse_duration(args.duration)
    server, base_url, pid = None, args.base_url, args.server_pid
    if base_url is None:
        from max.testing.server_process import ServerProcess

        args.token_ids_only = args.token_ids_only or "--skip-tokenizer-init" in extra
        print("starting serve ...", file=sys.stderr)
        try:
            server = ServerProcess(*extra, startup_timeout=1800)
        except RuntimeError as e:
            raise MaxError(f"`serve` did not start: {e}") from None
        base_url, pid = server.url, server.process.pid
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        served = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30).json()["data"][0]
        model, args.context_len = served["id"], int(served.get("max_model_len", 256))
        report = asyncio.run(soak(base_url, model, args, pid))
    finally:
        if server is not None:
            report_exit = server.stop(timeout=120)
            print(f"serve exited with status {report_exit}", file=sys.stderr)
    report["model"] = model
    report["serve_args"] = extra if args.base_url is None else None
    print(_format(report))
    for error in report["first_errors"]:
        print(f"lost: {error}", file=sys.stderr)
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(report, indent=2))
    return 0 if _ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
