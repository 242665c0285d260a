"""`serve`: load the model in an engine process, then run the HTTP API with uvicorn.

Stopping (SIGTERM or SIGINT): the server drains. /health answers 503 ("draining"), new
generation requests get 503, and those in flight get `--shutdown-grace-period` seconds to
finish; then the server stops (requests still running are cancelled and aborted in the
engine), the engine process is shut down, and the exit status is 0. A second signal stops
at once.

Engine failures (its process dies, a tensor-parallel rank dies or hangs, its steps fail even
for a probe request) are supervised (engine_supervisor.py): requests in flight get an error
body, /health answers 503 with the reason, and the engine is restarted with backoff; after
`--engine-max-restarts` attempts in a row the server exits with status 1, so that whatever
runs it can take over.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import signal
import time

import uvicorn

from max.errors import MaxError
from max.pipelines.lib import PipelineConfig, load_tokenizer, resolve_model, tokenizer_source
from max.pipelines.lib.lora.engine_lora import parse_lora_modules
from max.pipelines.lib.pooling.pooling_config import read_pooling_config
from max.serve.api_server import create_app
from max.serve.engine_client import EngineClient
from max.serve.engine_pool import EnginePool
from max.serve.engine_supervisor import SupervisedEngine
from max.serve.server_args import (
    media_options_from_args,
    restart_policy_from_args,
    server_limits_from_args,
)
from max.serve.server_state import ServerState

logger = logging.getLogger("max.serve")

# After the drain, what uvicorn still gives open responses to be written out.
CLOSE_CONNECTIONS_SECONDS = 5


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the URL once it listens and draining on a signal."""

    def __init__(self, config: uvicorn.Config, url: str, state: ServerState, grace: float) -> None:
        super().__init__(config)
        self.url = url
        self.state = state
        self.grace = grace
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        # A requested stop is the normal end of a server: drain and exit 0 (uvicorn would
        # re-raise the signal afterwards, ending with a signal status).
        name = signal.Signals(sig).name
        if self.drain_deadline is not None:
            logger.info("received %s again: stopping now", name)
            self.should_exit = self.force_exit = True
            return
        logger.info(
            "received %s: draining (no new requests; %d in flight get up to %g s)",
            name, self.state.active_requests, self.grace,
        )  # fmt: skip
        self.state.draining = True
        self.drain_deadline = time.monotonic() + self.grace

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.active_requests == 0:
                logger.info("drained: every request was answered")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                logger.warning("grace period over: cancelling %d request(s)", self.state.active_requests)
                self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            logger.info("Server ready on %s (model: %s)", self.url, self.state.served_model_name)


def serve_from_args(args: argparse.Namespace, config: PipelineConfig) -> int:
    """Runs the server until it is told to stop; returns the exit status."""
    from max.pipelines.architectures import register_all

    limits = server_limits_from_args(args)
    policy = restart_policy_from_args(args)
    media = media_options_from_args(args)
    if not args.shutdown_grace_period >= 0:
        raise MaxError(f"--shutdown-grace-period must be 0 or more seconds (got {args.shutdown_grace_period})")
    if config.torchrun is not None and policy.max_restarts:
        # Ranks on other hosts cannot be restarted from here: let torchrun decide.
        logger.info("under torchrun: a failed engine stops the server (no restarts)")
        policy = dataclasses.replace(policy, max_restarts=0)
    resolved = resolve_model(config, register_all())  # fail fast, before any process starts
    # The engines start from the pinned config: the Hub commit and the encoding resolved here.
    config = resolved.config
    if not config.skip_tokenizer_init:
        tokenizer_source(resolved)  # a missing tokenizer fails here too
    dp = config.data_parallel_size
    clients = functools.partial(EngineClient, step_stats_dir=args.step_stats_dir)
    if dp > 1:
        engine = EnginePool([config.replica(i) for i in range(dp)], policy, client_factory=clients)
    else:
        engine = SupervisedEngine(config, policy, client_factory=clients)
    try:
        engine.start()  # the engine process loads the weights while we load the tokenizer
        tokenizer = load_tokenizer(resolved)
        ready = engine.wait_ready()
        state = ServerState(
            tokenizer=tokenizer,
            engine=engine,
            served_model_name=args.served_model_name or resolved.source.name,
            max_seq_len=ready.max_seq_len,
            vocab_size=ready.vocab_size,
            api_key=args.api_key or None,
            metrics_need_api_key=args.require_api_key_for_metrics,
            allowed_origins=list(args.allowed_origins),
            limits=limits,
            media=media,
            log_requests=args.log_requests,
            reasoning_parser=getattr(args, "reasoning_parser", None),
            tool_call_parser=getattr(args, "tool_call_parser", None),
            lora_adapters=dict(parse_lora_modules(config.lora_modules)) if config.enable_lora else None,
            embedding=read_pooling_config(resolved.source.directory, resolved.hf_config) if config.task == "embed" else None,
        )

        @contextlib.asynccontextmanager
        async def lifespan(app):
            import asyncio

            engine.attach(asyncio.get_running_loop())
            yield
            engine.shutdown()

        app = create_app(state, lifespan=lifespan)
        failed: list[str] = []
        host = args.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{args.port}"
        server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=args.port,
                log_level="info",
                timeout_graceful_shutdown=CLOSE_CONNECTIONS_SECONDS,
                access_log=False,
            ),
            url,
            state,
            args.shutdown_grace_period,
        )

        def stop_on_give_up(message: str) -> None:
            logger.error("the engine cannot be restarted (%s): stopping the server", message)
            failed.append(message)
            server.should_exit = True

        engine.on_give_up = stop_on_give_up
        try:
            server.run()
        except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
            if e.code:
                raise MaxError(f"the server could not start on {url} (see the message above)") from None
        return 1 if failed else 0
    finally:
        engine.shutdown()
