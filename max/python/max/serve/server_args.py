"""Flags of `serve` beyond the model and engine ones: HTTP, security, limits, supervision."""

from __future__ import annotations

import argparse
import os

from max.errors import MaxError
from max.pipelines.lib import parse_memory
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
