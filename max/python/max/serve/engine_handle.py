"""What the HTTP side calls on an engine, whichever engine it is.

The handlers, the health route and /metrics talk to one object: an `EngineClient` (one
engine process), a `SupervisedEngine` (a client restarted when its process fails), an
`EnginePool` (data-parallel replicas, each supervised), or, in tests of the HTTP layer, the
in-process `max.testing.fake_engine.FakeEngine`. `EngineHandle` names what they all answer,
so that the HTTP side depends on that and not on any one of them.

Starting, waiting for and stopping the engine process (`start`, `wait_ready`, `attach`,
`shutdown`) are `serve`'s business (server.py), not the handlers', and are not part of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from max.pipelines.lib import EngineStats, RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput


@runtime_checkable
class EngineHandle(Protocol):
    """An engine as the HTTP side sees it: requests in, outputs out, and its health."""

    @property
    def alive(self) -> bool:
        """Whether the engine runs and takes requests (else new ones get 503)."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the engine (or some replica of it) is down; None while all is up."""
        ...

    @property
    def stats(self) -> EngineStats | None:
        """The engine's load as of its last step (None before it reported any)."""
        ...

    def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Runs one request (under LoRA adapter `lora`, if named) and yields its outputs until
        it finishes. Closing the iterator before then (the client left) aborts the request
        in the engine. (Engines that serve LoRA also answer `lora_op(name, path)`.)"""
        ...

    def abort(self, request_id: str) -> None:
        """Stops a request (e.g. its text reached a stop string); its pages are freed."""
        ...
