"""Keeping an engine process alive: restart it when it fails, give up after a few tries.

`SupervisedEngine` answers the calls of one `EngineClient` (generate, abort, alive,
stats...) and replaces the client when its process fails (it died, a tensor-parallel rank
died, or its steps fail even for a probe request). When that happens:
- the requests in flight end at once with an error body (the client does that);
- `alive` is False and `failure` says why, so /health answers 503 with the reason and new
  requests get 503 with Retry-After;
- after a backoff (`backoff_seconds`, doubling up to `max_backoff_seconds`) a new engine
  process is started (a tensor-parallel engine starts its ranks anew); each attempt is
  logged;
- after `max_restarts` attempts in a row without an engine that stayed up for
  `stable_after_seconds`, `on_give_up` is called: the server exits non-zero, so that
  whatever runs it (systemd, Kubernetes) can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from max.pipelines.lib import EngineStats, PipelineConfig, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput
from max.serve.engine_client import EngineClient
from max.serve.engine_handle import EngineHandle
from max.serve.engine_messages import EngineReady

logger = logging.getLogger("max.serve")


@dataclass(frozen=True)
class RestartPolicy:
    """How often and how fast a failed engine is restarted."""

    max_restarts: int = 3  # attempts in a row; 0: never restart (the server exits)
    backoff_seconds: float = 1.0  # before the first attempt; doubles with each next one
    max_backoff_seconds: float = 30.0
    stable_after_seconds: float = 60.0  # an engine up this long starts the count afresh
    start_timeout_seconds: float = 1800.0  # loading the model anew

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based)."""
        return min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)


class SupervisedEngine(EngineHandle):
    """One engine, restarted when it fails; see the module docstring. The HTTP side sees it
    as an `EngineHandle`."""

    def __init__(
        self,
        config: PipelineConfig,
        policy: RestartPolicy | None = None,
        name: str = "engine",
        client_factory: Callable[[PipelineConfig], EngineClient] = EngineClient,
    ) -> None:
        self.config = config
        self.policy = policy or RestartPolicy()
        self.name = name
        self._factory = client_factory
        self._client = client_factory(config)
        self._starting: EngineClient | None = None
        self._owner: dict[str, EngineClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restart_task: asyncio.Task | None = None
        self._stopped = False
        self._attempts = 0  # restart attempts in a row
        self._up_since = time.monotonic()
        self.ready: EngineReady | None = None
        self._failure: str | None = None  # why the engine went down (None while it is up)
        self.restarts = 0  # successful restarts, for /metrics
        # Called (in the event loop) when the engine failed and will not be restarted.
        self.on_give_up: Callable[[str], None] | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Starts the first engine process (it loads the model while the caller goes on)."""
        self._client.start()

    def wait_ready(self, timeout: float = 1800.0) -> EngineReady:
        """Waits for the first engine to load; a failure here is not retried (bad model...)."""
        self.ready = self._client.wait_ready(timeout)
        return self.ready

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts routing outputs into `loop` and watching the engine (call inside the loop)."""
        self._loop = loop
        self._adopt(self._client)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the engine (and any restart under way)."""
        self._stopped = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        for client in (self._starting, self._client):
            if client is not None:
                client.shutdown(timeout)

    # -- state ---------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """The engine runs and takes requests."""
        return not self._stopped and self._failure is None and self._client.alive

    @property
    def failure(self) -> str | None:
        """Why the engine is down (None while it is up)."""
        if self._failure is None and not self._stopped and not self._client.alive:
            # Dead, and the listener has not reported it yet.
            return self._client.failure or "the engine process is not running"
        return self._failure

    @property
    def restarting(self) -> bool:
        """A failed engine is being replaced."""
        return self._restart_task is not None and not self._restart_task.done()

    @property
    def stats(self) -> EngineStats | None:
        """The running engine's load; while it is down, nothing in use (its pages are gone)."""
        stats = self._client.stats
        if stats is not None and self.failure is not None:
            return EngineStats(0, 0, 0, stats.kv_pages_total, 0, stats.num_preemptions)
        return stats

    @property
    def pid(self) -> int | None:
        """The current engine process's id."""
        return self._client.pid

    # -- requests ------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Runs a request on the current engine (see `EngineClient.generate`)."""
        client = self._client
        self._owner[request_id] = client
        try:
            # Closed explicitly: a consumer that stops early aborts the request now.
            async with contextlib.aclosing(client.generate(request_id, prompt_ids, params, images, lora)) as outputs:
                async for output in outputs:
                    yield output
        finally:
            self._owner.pop(request_id, None)

    async def lora_op(self, name: str, path: str | None) -> None:
        """Loads (path None: unloads) a LoRA adapter on the current engine; a restarted
        engine loads the adapters loaded so far (they join its config's --lora-modules)."""
        await self._client.lora_op(name, path)
        kept = [m for m in self.config.lora_modules if m.partition("=")[0] != name]
        self.config = dataclasses.replace(self.config, lora_modules=kept + ([f"{name}={path}"] if path else []))

    def abort(self, request_id: str) -> None:
        """Stops a request on the engine that runs it."""
        client = self._owner.get(request_id)
        if client is not None:
            client.abort(request_id)

    # -- supervision ---------------------------------------------------------------------
    def _adopt(self, client: EngineClient) -> None:
        client.on_failure = lambda message: self._on_failure(client, message)
        client.attach(self._loop)
        self._client = client
        self._up_since = time.monotonic()

    def _on_failure(self, client: EngineClient, message: str) -> None:
        if client is not self._client or self._stopped:
            return
        self._failure = message
        if time.monotonic() - self._up_since >= self.policy.stable_after_seconds:
            self._attempts = 0
        logger.error("%s failed: %s", self.name, message)
        self._restart_task = self._loop.create_task(self._restart(client, message))

    async def _restart(self, failed: EngineClient, reason: str) -> None:
        # The old process (and its tensor-parallel ranks) must be gone before a new one
        # claims the devices.
        await asyncio.to_thread(failed.shutdown, 10.0)
        failed.on_failure = None  # no cycle: its queues are freed with it
        while not self._stopped:
            if self._attempts >= self.policy.max_restarts:
                self._give_up(reason)
                return
            self._attempts += 1
            attempt, limit = self._attempts, self.policy.max_restarts
            delay = self.policy.backoff(attempt)
            self._failure = f"{reason}; restarting (attempt {attempt} of {limit})"
            logger.warning("restarting %s in %.1f s (attempt %d of %d)", self.name, delay, attempt, limit)
            await asyncio.sleep(delay)
            client = self._factory(self.config)
            self._starting = client
            try:
                client.start()
                await asyncio.to_thread(client.wait_ready, self.policy.start_timeout_seconds)
            except Exception as e:  # it failed to load: count the attempt, try again
                await asyncio.to_thread(client.shutdown, 5.0)
                reason = f"the restarted engine did not start: {e}"
                logger.error("%s: %s", self.name, reason)
                continue
            finally:
                self._starting = None
            if self._stopped:
                client.shutdown()
                return
            self._adopt(client)
            self._failure = None
            self.restarts += 1
            logger.info("%s restarted (attempt %d of %d); serving again", self.name, attempt, limit)
            return

    def _give_up(self, reason: str) -> None:
        tried = self._attempts
        message = f"{reason} (no restart left after {tried} attempt{'s' if tried != 1 else ''})"
        self._failure = message
        logger.error("%s: giving up: %s", self.name, message)
        if self.on_give_up is not None:
            self.on_give_up(message)
