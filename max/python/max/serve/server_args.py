"""Flags of `serve` beyond the model and engine ones."""

from __future__ import annotations

import argparse


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """HTTP and queueing flags."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    g.add_argument("--served-model-name", help="model name clients use (default: the model path)")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    g.add_argument("--max-queue-size", type=int, default=1024, help="requests in flight before 503")
    g.add_argument("--seed", type=int, default=0, help="seed of dummy weights")
    g.add_argument("--log-requests", action="store_true", help="log each request")
