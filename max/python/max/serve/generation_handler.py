"""What both generation endpoints do with a request: prompt -> engine -> choices.

`GenerationHandler` takes a validated request (chat_request.py, completion_request.py),
checks that this server can run it (the model named, the engine up, the prompt's length,
its output constraint), turns its prompts into token ids (the endpoint's job), makes one
`Choice` per prompt and sample (`n`) with its own sampling parameters, runs them on the
engine (generation_choice.py, which also observes their latencies for /metrics) and
answers with one JSON body or a stream of events. A client that disconnects has its
requests aborted in the engine.

`ChatCompletionHandler` (chat_handler.py) and `CompletionHandler` (completion_handler.py)
hold what is particular to each endpoint: how the prompt is made, what a choice follows
in its text (harmony channels, tool calls), and what the answer says (response_rendering.py
writes it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from max.errors import MaxError
from max.pipelines.lib import RequestTextStream, TextDelta
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.sampling.structured_output import StructuredOutput, grammar_for
from max.serve import response_rendering as render
from max.serve.api_errors import ApiError, invalid
from max.serve.generation_choice import Choice, run_choice
from max.serve.generation_request import GenerationRequest
from max.serve.http_guard import queue_full
from max.serve.lora_handler import served_adapter
from max.serve.request_limits import check_prompt_chars, read_json
from max.serve.server_state import ServerState

logger = logging.getLogger("max.serve")


@dataclass
class EncodedPrompts:
    """A request's prompts as token ids, and the images the chat's prompt holds."""

    ids: list[list[int]]
    images: tuple[ImageInput, ...] = ()


class GenerationHandler(ABC):
    """Serves one generation endpoint (see the module docstring)."""

    request_model: ClassVar[type[GenerationRequest]]
    id_prefix: ClassVar[str]  # of the answer's id: chatcmpl-..., cmpl-...
    completion_kind: ClassVar[str]  # the `object` of a whole answer
    chunk_kind: ClassVar[str]  # the `object` of a streamed chunk

    def __init__(self, state: ServerState) -> None:
        self.state = state

    # -- what an endpoint adds -------------------------------------------------------------
    def _parse(self, body: Any) -> GenerationRequest:
        """The request a body asks for, validated (an endpoint may add what the server
        remembers, e.g. an earlier response)."""
        return self.request_model.from_json(body)

    @abstractmethod
    def _check_tokenizer_free(self, gen: GenerationRequest) -> None:
        """Refuses what needs a tokenizer, on a server started without one."""

    @abstractmethod
    async def _encode(self, gen: GenerationRequest) -> EncodedPrompts:
        """The request's prompts as token ids (MaxError: a prompt the tokenizer refuses)."""

    def _output_constraint(self, gen: GenerationRequest) -> tuple[str, StructuredOutput] | None:
        """The grammar the output follows, and the field that set it."""
        return gen.output_constraint

    def _new_choice(self, gen: GenerationRequest, index: int, request_id: str, prompt_index: int,
                    ids: list[int], stream: RequestTextStream, images: tuple[ImageInput, ...]) -> Choice:  # fmt: skip
        """A choice of this endpoint."""
        return Choice(index, request_id, prompt_index, ids, stream, images)

    def _shape_delta(self, choice: Choice, delta: TextDelta) -> TextDelta:
        """What a choice's new text says (e.g. which of it is a tool call)."""
        return delta

    @abstractmethod
    def _render_choice(self, gen: GenerationRequest, choice: Choice) -> dict[str, Any]:
        """A finished choice in the whole answer."""

    @abstractmethod
    def _stream_opening(self, gen: GenerationRequest, choices: list[Choice]) -> list[dict[str, Any]]:
        """The choices' first chunks, before any token (the role, the echoed prompt)."""

    @abstractmethod
    def _stream_item(self, gen: GenerationRequest, choice: Choice, delta: TextDelta, finish: str | None) -> dict[str, Any]:
        """A streamed chunk's choice, for a delta."""

    # -- the request -----------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        """Answers one request to the endpoint (a JSON body, or a stream)."""
        state = self.state
        gen = self._parse(await read_json(request, state.limits))
        self._check_served(gen)
        check_prompt_chars(gen.prompt_chars(), gen.prompt_param, state.limits.prompt_chars(state.max_seq_len))
        constraint = self._output_constraint(gen)
        if constraint is not None:
            await self._check_constraint(*constraint)
        prompts = await self._encoded_prompts(gen)
        base_id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        choices = self._choices(gen, prompts, base_id, constraint[1] if constraint else None)
        for choice in choices:
            choice.lora = served_adapter(state, gen.model)
        if state.metrics.in_flight + len(choices) > state.limits.max_queue_size:
            raise queue_full(state.limits.max_queue_size, state.limits.retry_after_seconds)
        prompt_tokens = sum(len(ids) for ids in prompts.ids)
        state.metrics.prompt_tokens += prompt_tokens
        state.metrics.vllm.prompt_processed(state.served_model_name, prompt_tokens)
        if state.log_requests:
            logger.info("%s: %d prompt(s), %d choice(s), stream=%s", base_id, len(prompts.ids), len(choices), gen.stream)
        if gen.stream:
            return StreamingResponse(
                self._stream(gen, choices, base_id, prompts.ids),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(request, gen, choices, base_id, prompts.ids)

    def _check_served(self, gen: GenerationRequest) -> None:
        """The request names this server's model, and the engine runs."""
        state = self.state
        served_adapter(state, gen.model)  # the base model or a LoRA adapter, else 400/404
        if not state.engine.alive:
            raise ApiError(
                503, "the engine is not running; retry later", type="server_error", code="engine_unavailable",
                headers={"Retry-After": str(state.limits.retry_after_seconds)},
            )  # fmt: skip

    async def _check_constraint(self, param: str, constraint: StructuredOutput) -> None:
        """Compiles the request's output constraint (cached), so that a bad schema or an
        unsupported feature is a 400 naming it, before the engine sees the request."""
        if self.state.tokenizer is None:
            raise ApiError(400, "structured outputs need a tokenizer (this server runs with --skip-tokenizer-init)",
                           param=param, code="tokenizer_required")  # fmt: skip
        try:
            await asyncio.to_thread(grammar_for, constraint)
        except MaxError as e:
            raise ApiError(400, str(e), param=param, code="unsupported_constraint") from None

    async def _encoded_prompts(self, gen: GenerationRequest) -> EncodedPrompts:
        if self.state.tokenizer is None:
            self._check_tokenizer_free(gen)
        try:
            return await self._encode(gen)
        except MaxError as e:
            raise ApiError(400, str(e), param=gen.prompt_param) from None

    def _choices(
        self, gen: GenerationRequest, prompts: EncodedPrompts, base_id: str, constraint: StructuredOutput | None
    ) -> list[Choice]:
        """n choices per prompt, each with its room in the context and its seed."""
        limit = self.state.max_seq_len
        choices = []
        for p, ids in enumerate(prompts.ids):
            if not ids:
                raise invalid("prompt", "the prompt is empty")
            if gen.max_tokens is None:
                max_new = limit - len(ids)
                if max_new < 1:
                    raise ApiError(
                        400,
                        f"the prompt has {len(ids)} tokens; the model's context length is {limit} tokens",
                        param=gen.prompt_param,
                        code="context_length_exceeded",
                    )
            else:
                max_new = gen.max_tokens
                if len(ids) + max_new > limit:
                    raise ApiError(
                        400,
                        f"the prompt ({len(ids)} tokens) plus max_tokens ({max_new}) exceeds the "
                        f"model's context length of {limit} tokens",
                        param="max_tokens",
                        code="context_length_exceeded",
                    )
            for i in range(gen.n):
                params = gen.to_sampling_params(max_new, i, constraint)
                stream = RequestTextStream(self.state.tokenizer, ids, params)
                choices.append(self._new_choice(gen, len(choices), f"{base_id}-{p}-{i}", p, ids, stream, prompts.images))
        return choices

    # -- running and answering -----------------------------------------------------------
    def _run(self, choice: Choice, sink: asyncio.Queue | None) -> Coroutine[Any, Any, None]:
        """Runs `choice` on the engine (see generation_choice.run_choice)."""
        return run_choice(choice, self.state.engine, self.state.metrics, self._shape_delta, sink)

    def _want_ids(self, gen: GenerationRequest) -> bool:
        """Whether choices carry their token ids (asked for, or no tokenizer to make text)."""
        return gen.return_token_ids or self.state.tokenizer is None

    def _ids_fields(self, gen: GenerationRequest, choice: Choice) -> dict[str, Any]:
        """A finished choice's `token_ids` (and, when asked for, `prompt_token_ids`)."""
        if not self._want_ids(gen):
            return {}
        return render.token_id_fields(choice.stream.token_ids, choice.prompt_ids if gen.return_token_ids else None)

    async def _complete(
        self, request: Request, gen: GenerationRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]]
    ) -> Response:
        state = self.state
        state.metrics.in_flight += len(choices)
        tasks = [asyncio.create_task(self._run(c, None)) for c in choices]
        work = asyncio.gather(*tasks)
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:  # the client left: stop generating for it
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return Response(status_code=499)
            work.result()
        finally:
            watcher.cancel()
            for t in tasks:
                t.cancel()
            state.metrics.in_flight -= len(choices)
        failed = next((c for c in choices if c.error), None)
        if failed is not None:
            raise generation_error(failed.error, failed.server_error)
        return JSONResponse(self._answer(gen, choices, base_id, prompt_ids))

    def _answer(self, gen: GenerationRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]]) -> dict[str, Any]:
        """The whole answer's body: OpenAI's completion object (another API writes its own)."""
        body = [self._render_choice(gen, c) for c in choices]
        return render.completion(base_id, self.completion_kind, gen.model, body, request_usage(choices, prompt_ids))

    async def _stream(
        self, gen: GenerationRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]]
    ) -> AsyncIterator[str]:
        state = self.state
        sink: asyncio.Queue = asyncio.Queue()
        state.metrics.in_flight += len(choices)
        tasks = [asyncio.create_task(self._run(c, sink)) for c in choices]
        try:
            async for event in self._events(gen, choices, base_id, prompt_ids, choice_deltas(sink, len(choices))):
                yield event
        finally:
            # Reached also when the client disconnects (the response task is cancelled):
            # cancelling the choice tasks aborts their requests in the engine.
            for t in tasks:
                t.cancel()
            state.metrics.in_flight -= len(choices)

    async def _events(
        self, gen: GenerationRequest, choices: list[Choice], base_id: str, prompt_ids: list[list[int]],
        deltas: AsyncIterator[tuple[Choice, TextDelta | None]],
    ) -> AsyncIterator[str]:  # fmt: skip
        """The stream's events for the choices' deltas: OpenAI's chunks (an endpoint with
        other events, e.g. Anthropic's, writes its own)."""

        def event(items: list[dict[str, Any]], use: dict[str, Any] | None = None) -> str:
            return render.sse(render.chunk(base_id, self.chunk_kind, gen.model, items, use))

        for item in self._stream_opening(gen, choices):
            yield event([item])
        want_ids = self._want_ids(gen)
        want_logprobs = gen.logprob_alternatives is not None
        async for choice, delta in deltas:
            if delta is None:  # the engine refused or failed this request
                yield render.sse(generation_error(choice.error or "generation failed", choice.server_error).body())
                continue
            if (
                not delta.text
                and not delta.reasoning_text
                and not delta.finished
                and not (want_logprobs and delta.logprobs)
                and not (want_ids and delta.token_ids)
                and not delta.tool_calls
            ):
                continue
            item = self._stream_item(gen, choice, delta, choice.finish_reason if delta.finished else None)
            if want_ids:
                item.update(render.token_id_fields(delta.token_ids))
            yield event([item])
        if gen.include_usage:
            yield event([], request_usage(choices, prompt_ids))
        yield render.STREAM_END


async def choice_deltas(sink: asyncio.Queue, count: int) -> AsyncIterator[tuple[Choice, TextDelta | None]]:
    """The (choice, delta) pairs `count` running choices push to `sink` (merged where they
    waited: merge_waiting), until each has finished or failed (its delta None)."""
    remaining = count
    while remaining:
        waiting = [await sink.get()]
        while not sink.empty():
            waiting.append(sink.get_nowait())
        for choice, delta in merge_waiting(waiting):
            if delta is None or delta.finished:
                remaining -= 1
            yield choice, delta


def generation_error(message: str, server_error: bool = False) -> ApiError:
    """The error of a request the engine refused (400) or could not run (engine down: 500)."""
    if server_error:
        return ApiError(500, message, type="server_error")
    return ApiError(400, message)


def merge_waiting(waiting: list[tuple[Choice, TextDelta | None]]) -> list[tuple[Choice, TextDelta | None]]:
    """Consecutive deltas of one choice as one: a stream that fell behind the engine (each
    chunk costs the event loop tens of microseconds, and thousands of tokens a second arrive
    at high concurrency) catches up in fewer, larger chunks. Errors stay on their own."""
    merged: list[tuple[Choice, TextDelta | None]] = []
    for choice, delta in waiting:
        if merged and merged[-1][0] is choice and delta is not None:
            last = merged[-1][1]
            if last is not None and not last.finished:
                merged[-1] = (choice, last.followed_by(delta))
                continue
        merged.append((choice, delta))
    return merged


def request_usage(choices: list[Choice], prompt_ids: list[list[int]]) -> dict[str, Any]:
    """Usage of a request: each prompt counted once (and its tokens the prefix cache held,
    as its first choice found them), every choice's tokens."""
    cached = {c.prompt_index: c.stream.num_cached_tokens for c in reversed(choices)}
    return render.usage(
        sum(len(ids) for ids in prompt_ids), sum(len(c.stream.token_ids) for c in choices), sum(cached.values())
    )


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes its connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
