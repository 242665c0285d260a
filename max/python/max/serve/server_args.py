"""Flags of `serve` beyond the model and engine ones: HTTP, security, limits, supervision."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib import parse_memory
from max.pipelines.lib.tokens.reasoning import REASONING_PARSERS
from max.pipelines.lib.tokens.tool_calls import FORMATS as TOOL_CALL_FORMATS
from max.serve.chat_images import DEFAULT_MAX_IMAGES, MediaOptions
from max.serve.engine_supervisor import RestartPolicy
from max.serve.request_limits import PROMPT_CHARS_PER_TOKEN, ServerLimits

API_KEY_ENV = "MAX_SERVE_API_KEY"


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """HTTP, security, limit and supervision flags."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    g.add_argument("--served-model-name", help="model name clients use (default: the model path)")
    g.add_argument("--seed", type=int, default=0, help="seed of dummy weights")
    g.add_argument("--log-requests", action="store_true", help="log each request")
    g.add_argument(
        "--reasoning-parser",
        choices=REASONING_PARSERS,
        help="split the model's <think>...</think> from its answer into `reasoning_content` "
        "(qwen3: the model opens the block; deepseek_r1: the chat template does); harmony "
        "models (gpt-oss) are split without it",
    )
    g.add_argument(
        "--tool-call-parser",
        choices=TOOL_CALL_FORMATS,
        help="the format of the model's tool calls (default: the one its chat template shows; "
        "hermes for templates that render no tools)",
    )
    s = parser.add_argument_group("security")
    s.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on every route but /health and /metrics "
        f"(default: ${API_KEY_ENV}, which keeps the key out of the process list)",
    )
    s.add_argument(
        "--require-api-key-for-metrics", action="store_true", help="/metrics needs the API key too"
    )
    s.add_argument(
        "--allowed-origins",
        nargs="+",
        default=[],
        metavar="ORIGIN",
        help="enable CORS for these browser origins (e.g. https://app.example.com, or *); off by default",
    )
    lim = parser.add_argument_group("limits (each refusal is a 4xx naming its flag)")
    lim.add_argument(
        "--max-queue-size",
        type=int,
        default=1024,
        help="generation requests (and sequences: prompts x n) in the server at once; "
        "one more gets 429 with Retry-After (default 1024)",
    )
    lim.add_argument(
        "--max-request-body-bytes",
        default="32MiB",
        help="largest request body, e.g. 1MiB; larger ones get 413 before they are read (default 32MiB)",
    )
    lim.add_argument("--max-json-depth", type=int, default=64, help="deepest JSON nesting of a body (default 64)")
    lim.add_argument(
        "--max-prompt-chars",
        type=int,
        help=f"longest prompt in characters, checked before tokenizing "
        f"(default: {PROMPT_CHARS_PER_TOKEN} per token of the context length)",
    )
    lim.add_argument(
        "--request-timeout",
        type=float,
        help="seconds a generation request may take, body and generation included; then 408 "
        "(default: no limit)",
    )
    media = parser.add_argument_group("images (vision-language models)")
    media.add_argument(
        "--allowed-local-media-path",
        metavar="DIR",
        help="let requests name local image files (file:// URLs or paths) inside DIR; off by default",
    )
    media.add_argument(
        "--limit-mm-per-prompt",
        metavar="JSON",
        default=json.dumps({"image": DEFAULT_MAX_IMAGES}),
        help=f"most images per prompt, as vLLM writes it: '{{\"image\": N}}' (default {DEFAULT_MAX_IMAGES})",
    )
    media.add_argument(
        "--media-fetch-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds an http(s) image may take to download (default 5)",
    )
    media.add_argument(
        "--max-image-bytes",
        default="20MiB",
        help="largest image file (fetched, embedded in a data URL or read from disk), e.g. 5MiB (default 20MiB)",
    )
    sup = parser.add_argument_group("supervision")
    sup.add_argument(
        "--engine-max-restarts",
        type=int,
        default=3,
        help="restarts in a row of a failed engine before the server exits non-zero (default 3; 0: exit at once)",
    )
    sup.add_argument(
        "--engine-restart-backoff",
        type=float,
        default=1.0,
        help="seconds before the first restart; doubles with each attempt, up to 30 (default 1)",
    )
    sup.add_argument(
        "--step-stats-dir",
        metavar="DIR",
        help="record every engine step (kind, tokens, host and GPU time) and write DIR/steps-PID.json "
        "when the engine stops (max.pipelines.lib.engine.step_recorder; tools/serve_timeline.py reads it)",
    )
    sup.add_argument(
        "--shutdown-grace-period",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT: seconds in-flight requests get to finish (default 30)",
    )


def server_limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The limits the flags ask for; MaxError naming a flag out of range."""
    body = parse_memory(args.max_request_body_bytes)
    for flag, value in (
        ("--max-queue-size", args.max_queue_size),
        ("--max-request-body-bytes", body),
        ("--max-json-depth", args.max_json_depth),
        ("--max-prompt-chars", args.max_prompt_chars),
    ):
        if value is not None and value < 1:
            raise MaxError(f"{flag} must be at least 1 (got {value})")
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise MaxError(f"--request-timeout must be a positive number of seconds (got {args.request_timeout})")
    return ServerLimits(
        max_body_bytes=body,
        max_json_depth=args.max_json_depth,
        max_prompt_chars=args.max_prompt_chars,
        max_queue_size=args.max_queue_size,
        request_timeout=args.request_timeout,
    )


def restart_policy_from_args(args: argparse.Namespace) -> RestartPolicy:
    """The engine restart policy the flags ask for."""
    if args.engine_max_restarts < 0:
        raise MaxError(f"--engine-max-restarts must be 0 or more (got {args.engine_max_restarts})")
    if not args.engine_restart_backoff >= 0:
        raise MaxError(f"--engine-restart-backoff must be 0 or more seconds (got {args.engine_restart_backoff})")
    return RestartPolicy(max_restarts=args.engine_max_restarts, backoff_seconds=args.engine_restart_backoff)


def media_options_from_args(args: argparse.Namespace) -> MediaOptions:
    """Which images requests may hold, from the flags; MaxError naming a bad flag."""
    allowed = None
    if args.allowed_local_media_path:
        allowed = Path(args.allowed_local_media_path).expanduser().resolve()
        if not allowed.is_dir():
            raise MaxError(f"--allowed-local-media-path: {args.allowed_local_media_path} is not a directory")
    if not args.media_fetch_timeout > 0:
        raise MaxError(f"--media-fetch-timeout must be a positive number of seconds (got {args.media_fetch_timeout})")
    max_bytes = parse_memory(args.max_image_bytes)
    if max_bytes is None or max_bytes < 1:
        raise MaxError(f"--max-image-bytes must be at least 1 (got {args.max_image_bytes})")
    return MediaOptions(
        max_images=_image_limit(args.limit_mm_per_prompt),
        allowed_local_media_path=allowed,
        fetch_timeout_s=args.media_fetch_timeout,
        max_image_bytes=max_bytes,
    )


def _image_limit(text: str) -> int:
    """The image count of --limit-mm-per-prompt (a JSON object such as {"image": 4}); other
    modalities may only be 0 (none is supported)."""
    try:
        limits = json.loads(text)
    except ValueError:
        limits = None
    if not isinstance(limits, dict):
        raise MaxError(f"--limit-mm-per-prompt must be a JSON object such as '{{\"image\": 4}}' (got {text!r})")
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MaxError(f"--limit-mm-per-prompt: {key!r} must be a count of 0 or more (got {value!r})")
        if key != "image" and value:
            raise MaxError(f"--limit-mm-per-prompt: only images are supported, not {key!r}")
    return limits.get("image", DEFAULT_MAX_IMAGES)
