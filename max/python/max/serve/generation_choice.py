"""One choice of a generation request, and its run on the engine.

A choice is one generated sequence: a prompt x one of its `n` samples, with its own
request id in the engine and its own sampling parameters (its seed). `run_choice` submits
it, follows its outputs as text (detokenized, stop strings applied; the endpoint's handler
may reshape each delta, e.g. split tool calls out of a chat's text), collects its logprobs,
observes the latencies for /metrics, and ends it with an error if the engine fails or
refuses it. Cancelling the run (the client left) aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from max.errors import MaxError
from max.pipelines.lib import RequestOutput, RequestTextStream, TextDelta, TokenLogprob
from max.pipelines.lib.model.multimodal import ImageInput
from max.serve.engine_handle import EngineHandle
from max.serve.metrics import ServerMetrics

logger = logging.getLogger("max.serve")


@dataclass
class Choice:
    """One generated sequence (a prompt x one of its n samples)."""

    index: int
    request_id: str
    prompt_index: int
    prompt_ids: list[int]
    stream: RequestTextStream
    images: tuple[ImageInput, ...] = ()  # the prompt's images, on its image tokens
    lora: str | None = None  # the LoRA adapter it runs (None: the base model)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    error: str | None = None
    server_error: bool = False

    @property
    def finish_reason(self) -> str | None:
        """Why the choice ended (None while it runs)."""
        return self.stream.finish_reason


# How an endpoint reshapes a choice's new text (the identity for completions).
DeltaShaper = Callable[[Choice, TextDelta], TextDelta]


async def run_choice(
    choice: Choice, engine: EngineHandle, metrics: ServerMetrics, shape: DeltaShaper, sink: asyncio.Queue | None
) -> None:
    """Drives one choice to its end; pushes (choice, delta) to `sink` when streaming, and
    (choice, None) when the choice ends with an error."""
    start = time.monotonic()
    outputs = engine.generate(choice.request_id, choice.prompt_ids, choice.stream.params, images=choice.images, lora=choice.lora)
    try:
        await _consume(choice, outputs, engine, metrics, shape, sink, start)
    except Exception as e:  # the engine went down since the check, or a bug: end the choice
        if isinstance(e, MaxError):
            choice.error = str(e)
        else:
            logger.exception("request %s failed", choice.request_id)
            choice.error = f"internal error: {type(e).__name__}"
        choice.server_error = True
        choice.stream.finished = True
        if sink is not None:
            await sink.put((choice, None))
    finally:
        # Closing the stream early (cancelled: client gone) aborts the engine request.
        await outputs.aclose()


async def _consume(
    choice: Choice,
    outputs: AsyncIterator[RequestOutput],
    engine: EngineHandle,
    metrics: ServerMetrics,
    shape: DeltaShaper,
    sink: asyncio.Queue | None,
    start: float,
) -> None:
    last = start
    first = True
    async for output in outputs:
        if output.error:
            choice.error = output.error
            choice.server_error = output.server_error
            choice.stream.finished = True
            if sink is not None:
                await sink.put((choice, None))
            return
        if output.new_token_ids:
            now = time.monotonic()
            if first:
                metrics.time_to_first_token.observe(now - start)
                metrics.vllm.first_output(output.num_prompt_tokens, output.num_cached_tokens, now - start)
                first = False
            else:
                metrics.inter_token_latency.observe(now - last)
                metrics.vllm.next_token(now - last)
            last = now
            metrics.generation_tokens += len(output.new_token_ids)
            metrics.vllm.tokens_generated(len(output.new_token_ids))
        delta = shape(choice, choice.stream.update(output))
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        if sink is not None:
            await sink.put((choice, delta))
        if choice.stream.finished:
            if delta.stopped_by_string:
                engine.abort(choice.request_id)
            latency = time.monotonic() - start
            metrics.request_latency.observe(latency)
            metrics.vllm.finished(choice.finish_reason, len(choice.prompt_ids), len(choice.stream.token_ids), latency)
            return
