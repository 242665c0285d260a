"""`serve`: load the model in an engine process, then run the HTTP API with uvicorn.

SIGINT / SIGTERM: uvicorn stops accepting connections, lets in-flight requests finish (up
to a grace period, after which they are cancelled and aborted in the engine), and the
engine process is shut down; the exit status is 0. If the engine fails while serving (its
process dies, a tensor-parallel rank dies or hangs), requests in flight get an error body,
/health answers 503, and the server stops with exit status 1 so that a supervisor can
restart it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

import uvicorn

from max.errors import MaxError
from max.pipelines.lib import PipelineConfig, load_tokenizer, resolve_model, tokenizer_source
from max.serve.api_server import ServerState, create_app
from max.serve.engine_client import EngineClient
from max.serve.engine_pool import EnginePool

logger = logging.getLogger("max.serve")

GRACEFUL_SHUTDOWN_SECONDS = 30


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the URL once it really listens."""

    def __init__(self, config: uvicorn.Config, url: str, model: str) -> None:
        super().__init__(config)
        self.url = url
        self.model = model

    def handle_exit(self, sig: int, frame) -> None:
        # A requested stop is the normal end of a server: shut down gracefully and exit 0
        # (uvicorn would re-raise the signal afterwards, ending with a signal status).
        logger.info("received %s: finishing in-flight requests, then exiting", signal.Signals(sig).name)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops at once
        self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            logger.info("Server ready on %s (model: %s)", self.url, self.model)


def serve_from_args(args: argparse.Namespace, config: PipelineConfig) -> int:
    """Runs the server until it is told to stop; returns the exit status."""
    from max.pipelines.architectures import register_all

    resolved = resolve_model(config, register_all())  # fail fast, before any process starts
    if not config.skip_tokenizer_init:
        tokenizer_source(resolved)  # a missing tokenizer fails here too
    dp = config.data_parallel_size
    engine = EnginePool([config.replica(i) for i in range(dp)]) if dp > 1 else EngineClient(config)
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
            api_key=args.api_key,
            max_queue_size=args.max_queue_size,
            log_requests=args.log_requests,
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
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                access_log=False,
            ),
            url,
            state.served_model_name,
        )

        def stop_on_failure(message: str) -> None:
            logger.error("the engine failed (%s): stopping the server", message)
            failed.append(message)
            server.should_exit = True

        engine.on_failure = stop_on_failure
        try:
            server.run()
        except SystemExit as e:  # uvicorn exits this way when it cannot bind the port
            if e.code:
                raise MaxError(f"the server could not start on {url} (see the message above)") from None
        return 1 if failed else 0
    finally:
        engine.shutdown()
