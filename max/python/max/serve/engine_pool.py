"""Data-parallel replicas behind one endpoint: several engines, each request sent to one.

`--data-parallel-size M` starts M engine processes, each on its own slice of the GPUs (and
with its own tensor-parallel group). A new request goes to the replica with the fewest
tokens in flight (prompt and generated tokens of its unfinished requests). The pool
answers the same calls as one `SupervisedEngine`, so the HTTP server does not know the
difference; `/metrics` shows each replica's gauges.

Each replica is supervised on its own: while a failed one restarts, the others take every
request (the server stays healthy, /health says "degraded"); a replica that cannot be
restarted stops the server, as a single engine would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from max.errors import MaxError
from max.pipelines.lib import EngineStats, PipelineConfig, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput
from max.serve.engine_client import EngineClient
from max.serve.engine_handle import EngineHandle
from max.serve.engine_messages import EngineReady
from max.serve.engine_supervisor import RestartPolicy, SupervisedEngine


class EnginePool(EngineHandle):
    """M engine replicas with least-loaded routing; see the module docstring. The HTTP side
    sees it as an `EngineHandle`, as it would one `SupervisedEngine`."""

    def __init__(
        self,
        configs: list[PipelineConfig],
        policy: RestartPolicy | None = None,
        client_factory: Callable[[PipelineConfig], EngineClient] = EngineClient,
    ) -> None:
        self.replicas = [
            SupervisedEngine(c, policy, name=f"replica {i}", client_factory=client_factory) for i, c in enumerate(configs)
        ]
        self.tokens_in_flight = [0] * len(configs)
        self.requests_routed = [0] * len(configs)
        self._owner: dict[str, int] = {}

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Starts every replica's engine process (they load in parallel)."""
        for replica in self.replicas:
            replica.start()

    def wait_ready(self, timeout: float = 1800.0) -> EngineReady:
        """Waits until every replica has loaded; a failing one stops them all."""
        try:
            readies = [replica.wait_ready(timeout) for replica in self.replicas]
        except BaseException:
            self.shutdown()
            raise
        return readies[0]

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Routes every replica's outputs into `loop`."""
        for replica in self.replicas:
            replica.attach(loop)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops every replica."""
        for replica in self.replicas:
            replica.shutdown(timeout)

    @property
    def on_give_up(self) -> Callable[[str], None] | None:
        return self.replicas[0].on_give_up

    @on_give_up.setter
    def on_give_up(self, callback: Callable[[str], None] | None) -> None:
        for i, replica in enumerate(self.replicas):
            replica.on_give_up = None if callback is None else (lambda m, i=i: callback(f"replica {i}: {m}"))

    @property
    def alive(self) -> bool:
        """Some replica takes requests."""
        return any(replica.alive for replica in self.replicas)

    @property
    def failure(self) -> str | None:
        """Why replicas are down (None when every one is up)."""
        down = [f"replica {i}: {r.failure}" for i, r in enumerate(self.replicas) if r.failure]
        return "; ".join(down) if down else None

    @property
    def restarts(self) -> int:
        """Replica restarts in all."""
        return sum(replica.restarts for replica in self.replicas)

    @property
    def stats(self) -> EngineStats | None:
        """The replicas' loads added up."""
        stats = [s for s in self.replica_stats if s is not None]
        if not stats:
            return None
        return EngineStats(*(sum(getattr(s, f) for s in stats) for f in EngineStats.__dataclass_fields__))

    @property
    def replica_stats(self) -> list[EngineStats | None]:
        """Each replica's load, for /metrics."""
        return [replica.stats for replica in self.replicas]

    # -- requests ------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Runs the request on the running replica with the fewest tokens in flight."""
        up = [i for i, replica in enumerate(self.replicas) if replica.alive]
        if not up:
            raise MaxError(self.failure or "no engine replica is running")
        index = min(up, key=lambda i: self.tokens_in_flight[i])
        self._owner[request_id] = index
        self.requests_routed[index] += 1
        held = len(prompt_ids)
        self.tokens_in_flight[index] += held
        try:
            # Closed explicitly: a consumer that stops early aborts the request now.
            replica = self.replicas[index]
            async with contextlib.aclosing(replica.generate(request_id, prompt_ids, params, images, lora)) as outputs:
                async for output in outputs:
                    self.tokens_in_flight[index] += len(output.new_token_ids)
                    held += len(output.new_token_ids)
                    yield output
        finally:
            self.tokens_in_flight[index] -= held
            self._owner.pop(request_id, None)

    async def lora_op(self, name: str, path: str | None) -> None:
        """Loads (path None: unloads) a LoRA adapter on every replica, one after another."""
        for replica in self.replicas:
            await replica.lora_op(name, path)

    def abort(self, request_id: str) -> None:
        """Stops a request on the replica that runs it."""
        index = self._owner.get(request_id)
        if index is not None:
            self.replicas[index].abort(request_id)
