"""An in-process stand-in for the server's engine, for HTTP-layer tests without a model.

It answers the calls the HTTP server makes of a `SupervisedEngine` (generate, abort, alive,
failure, stats, restarts) and produces token ids 1, 2, 3... at a chosen pace, so tests of
limits, deadlines, authentication and error bodies run in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from max.pipelines.lib import EngineStats, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput


class FakeEngine:
    """Generates `max_new_tokens` ids (default 3), one every `delay` seconds."""

    def __init__(self, delay: float = 0.0, kv_pages_total: int = 64) -> None:
        self.delay = delay
        self.alive = True
        self.failure: str | None = None
        self.restarts = 0
        self.stats = EngineStats(0, 0, 0, kv_pages_total, 0, 0)
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.error: str | None = None  # when set, every request fails with it (a server error)
        # What each request brought: its prompt ids and images (for tests of the HTTP layer).
        self.received: dict[str, tuple[list[int], tuple[ImageInput, ...]]] = {}

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields one token per output until max_new_tokens (3 when unset)."""
        self.received[request_id] = (list(prompt_ids), tuple(images))
        count = params.max_new_tokens if params.max_new_tokens is not None else 3
        self.running.add(request_id)
        finished = False
        try:
            if self.error is not None:
                finished = True
                yield RequestOutput(request_id, [], True, "error", error=self.error, server_error=True)
                return
            for i in range(count):
                await asyncio.sleep(self.delay)
                finished = i == count - 1
                yield RequestOutput(
                    request_id, [i + 1], finished, "length" if finished else None, num_prompt_tokens=len(prompt_ids)
                )
        finally:
            self.running.discard(request_id)
            if not finished:
                self.aborted.append(request_id)

    def abort(self, request_id: str) -> None:
        """Records the abort (the generator's own clean-up does the rest)."""
        if request_id in self.running:
            self.aborted.append(request_id)
