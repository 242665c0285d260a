"""The HTTP process's handle on the engine process.

`EngineClient` starts the engine worker, sends it requests and aborts, and routes each
step's outputs to the `OutputStream` of the request they belong to. A thread reads the
engine's outbox so that the event loop never blocks on it. One client is one engine
process's life: when it fails, its requests end with an error and `on_failure` is called;
`SupervisedEngine` (engine_supervisor.py) then starts a new client.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from max.errors import MaxError
from max.pipelines.lib import EngineStats, PipelineConfig, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput
from max.serve.engine_messages import (
    AbortRequest,
    AddRequest,
    EngineFailed,
    EngineReady,
    LoRAAdapterOp,
    Shutdown,
    StepOutputs,
)
from max.serve.engine_worker import run_engine_worker


class OutputStream:
    """One request's outputs on their way from the engine to the request's handler.

    An output that arrives while the handler has not yet taken the one before is merged
    into it (its tokens and logprobs appended, its finish taken): a handler that falls
    behind (thousands of tokens a second to stream) gets fewer, larger deltas rather than a
    growing backlog, as with vLLM's RequestOutputCollector. Tokens, their order and the
    finish reason are unchanged; only how they are grouped into chunks. Errors are never
    merged: they arrive on their own, after whatever came before them.
    """

    def __init__(self, merge: bool = True) -> None:
        self._pending: deque[RequestOutput] = deque()
        self._ready = asyncio.Event()
        # Off for requests with stop strings: the tokens after a stop string must stay in
        # outputs of their own, which the handler drops once the string is found.
        self._merge = merge

    def put(self, output: RequestOutput) -> None:
        """Queues `output`, merged into the last queued one where it can be."""
        last = self._pending[-1] if self._pending and self._merge else None
        if last is not None and not last.finished and last.error is None and output.error is None:
            last.new_token_ids.extend(output.new_token_ids)
            if output.logprobs is not None:
                last.logprobs = [*(last.logprobs or []), *output.logprobs]
            if last.prompt_logprobs is None:
                last.prompt_logprobs = output.prompt_logprobs
            last.finished, last.finish_reason = output.finished, output.finish_reason
            last.embedding = output.embedding if output.embedding is not None else last.embedding
        else:
            self._pending.append(output)
        self._ready.set()

    async def get(self) -> RequestOutput:
        """The next (possibly merged) output; waits for one."""
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()


class EngineClient:
    """Starts, feeds and listens to the engine process.

    It answers the `EngineHandle` protocol (engine_handle.py) structurally: its `failure`
    and `stats` are plain attributes, which the protocol's read-only properties allow.
    """

    def __init__(self, config: PipelineConfig, step_stats_dir: str | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._inbox = ctx.Queue()
        self._outbox = ctx.Queue()
        self._process = ctx.Process(
            target=run_engine_worker,
            args=(config, self._inbox, self._outbox, step_stats_dir),
            name="max-engine",
            # Not a daemon: it may start processes of its own (tensor-parallel ranks). It
            # exits when told to, and on its own once the server is gone.
            daemon=False,
        )
        self._streams: dict[str, OutputStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: threading.Thread | None = None
        self._stopping = False
        self.ready: EngineReady | None = None
        self.failure: str | None = None
        # Called (in the event loop) once the engine has failed after starting.
        self.on_failure: Callable[[str], None] | None = None
        self.stats: EngineStats | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Starts the engine process; it loads the model while the caller goes on."""
        self._process.start()

    def wait_ready(self, timeout: float = 1800.0) -> EngineReady:
        """Waits until the engine process has loaded its model (or failed to)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._outbox.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive():
                    raise MaxError(
                        f"the engine process exited while loading (exit code {self._process.exitcode})"
                    ) from None
                continue
            if isinstance(message, EngineFailed):
                self._process.join(timeout=10)
                raise MaxError(message.message)
            if isinstance(message, EngineReady):
                self.ready = message
                # /metrics shows the cache's size (and LoRA's slots) before the first step reports them.
                self.stats = message.stats or EngineStats(0, 0, 0, message.kv_pages_total, 0, 0)
                return message
        self.shutdown()
        raise MaxError(f"the engine did not load its model within {timeout:.0f} s")

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts routing engine outputs into `loop` (call from inside the loop)."""
        self._loop = loop
        self._listener = threading.Thread(target=self._listen, name="max-engine-listener", daemon=True)
        self._listener.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the engine process (gently, then by force)."""
        self._stopping = True
        if self._process.pid is not None and self._process.is_alive():
            self._inbox.put(Shutdown())
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        # Messages nobody will read must not keep this process from exiting.
        self._inbox.cancel_join_thread()

    @property
    def pid(self) -> int | None:
        """The engine process's id (None before it starts)."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """The engine process is running and has not failed."""
        return self.failure is None and self._process.is_alive()

    # -- requests ------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submits a request (with its prompt's images, under LoRA adapter `lora`) and yields
        its outputs until it finishes.

        If the consumer stops early (client gone), the request is aborted in the engine.
        """
        if not self.alive:
            raise MaxError(self.failure or "the engine is not running")
        stream = OutputStream(merge=not params.stop)
        self._streams[request_id] = stream
        self._inbox.put(AddRequest(request_id, prompt_ids, params, tuple(images), lora))
        finished = False
        try:
            while not finished:
                output = await stream.get()
                finished = output.finished
                yield output
        finally:
            if not finished:
                self.abort(request_id)

    async def lora_op(self, name: str, path: str | None) -> None:
        """Loads adapter folder `path` as `name` in the engine (None: unloads `name`) between
        two steps; raises MaxError with the engine's reason if it refused."""
        if not self.alive:
            raise MaxError(self.failure or "the engine is not running")
        op_id = f"lora-op-{uuid.uuid4().hex}"
        stream = self._streams[op_id] = OutputStream()
        self._inbox.put(LoRAAdapterOp(op_id, name, path))
        output = await stream.get()
        if output.error is not None:
            raise MaxError(output.error)

    def abort(self, request_id: str) -> None:
        """Stops a request: its pages are freed in the engine's next loop turn."""
        if self._streams.pop(request_id, None) is not None:
            self._inbox.put(AbortRequest(request_id))

    # -- routing -------------------------------------------------------------------------
    def _listen(self) -> None:
        while not self._stopping:
            try:
                message = self._outbox.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive() and not self._stopping:
                    message = EngineFailed(f"the engine process died (exit code {self._process.exitcode})")
                else:
                    continue
            except (EOFError, OSError):
                message = EngineFailed("the engine process closed its connection")
            self._loop.call_soon_threadsafe(self._dispatch, message)
            if isinstance(message, EngineFailed):
                return

    def _dispatch(self, message: object) -> None:
        if isinstance(message, StepOutputs):
            if message.stats is not None:
                self.stats = message.stats
            for output in message.outputs:
                stream = self._streams.get(output.request_id)
                if stream is None:
                    continue  # aborted by us already
                if output.finished:
                    del self._streams[output.request_id]
                stream.put(output)
        elif isinstance(message, EngineFailed):
            self.failure = message.message
            for request_id, stream in list(self._streams.items()):
                stream.put(RequestOutput(request_id, [], True, "error", error=message.message, server_error=True))
            self._streams.clear()
            if self.on_failure is not None:
                self.on_failure(message.message)
