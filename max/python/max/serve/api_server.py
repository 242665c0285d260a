"""The OpenAI-compatible HTTP API (starlette).

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health
(and /v1/health), GET /metrics, POST /tokenize, POST /detokenize, GET /openapi.json
(the bodies' pydantic models are in openai_models.py). The HTTP process parses, tokenizes, applies chat templates
and detokenizes; the engine process only sees token ids (and, for a vision-language model,
the chat's images, loaded and processed here: chat_images.py). Without a tokenizer
(`--skip-tokenizer-init`) only /v1/completions with token-id prompts is served, and each
choice carries its generated ids in `token_ids`. Every failure a client can cause
is answered in OpenAI's error shape with a 4xx status; a client that disconnects has its
requests aborted in the engine. What each request may cost (body size, JSON depth, prompt
characters) is checked in request_limits.py; the API key, admission (429) and deadlines
(408) in http_guard.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from max.errors import MaxError
from max.pipelines.lib import RequestTextStream, TextDelta, TextTokenizer, TokenLogprob
from max.pipelines.lib.harmony import HarmonyParser, HarmonyTokens
from max.pipelines.lib.multimodal import ImageInput
from max.pipelines.lib.structured_output import StructuredOutput, grammar_for
from max.pipelines.lib.tool_calls import (
    HERMES,
    TAGS,
    ToolCallParser,
    detect_format,
    messages_without_tool_fields,
    template_knows_tools,
    tool_call_grammar,
)
from max.serve import openai_responses as responses
from max.serve.chat_images import MediaOptions, images_not_supported, load_request_images
from max.serve.engine_supervisor import SupervisedEngine
from max.serve.error_redaction import redact
from max.serve.http_guard import HttpGuard, queue_full
from max.serve.metrics import ServerMetrics
from max.serve.openai_models import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    openapi_document,
    validate_body,
)
from max.serve.openai_protocol import (
    ApiError,
    GenerationRequest,
    invalid,
    parse_chat_request,
    parse_completion_request,
)
from max.serve.request_limits import ServerLimits, check_prompt_chars, read_json

logger = logging.getLogger("max.serve")


@dataclass
class ServerState:
    """What the handlers share."""

    tokenizer: TextTokenizer | None  # None: --skip-tokenizer-init, token ids only
    engine: SupervisedEngine  # or an EnginePool of them (data-parallel replicas)
    served_model_name: str
    max_seq_len: int
    vocab_size: int
    api_key: str | None = None
    metrics_need_api_key: bool = False
    limits: ServerLimits = field(default_factory=ServerLimits)
    log_requests: bool = False
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    draining: bool = False  # SIGTERM: finish what is in flight, take nothing new
    active_requests: int = 0  # generation requests admitted and not yet answered
    allowed_origins: list[str] = field(default_factory=list)  # CORS: none unless configured
    media: MediaOptions = field(default_factory=MediaOptions)  # which images chats may hold


@dataclass
class _Choice:
    """One generated sequence (a prompt x one of its n samples)."""

    index: int
    request_id: str
    prompt_index: int
    prompt_ids: list[int]
    stream: RequestTextStream
    logprobs: list[TokenLogprob] = field(default_factory=list)
    error: str | None = None
    server_error: bool = False
    harmony: HarmonyParser | None = None  # a harmony model's chat: splits final from analysis
    tools: ToolCallParser | None = None  # a chat with tools: splits calls from content
    tool_calls_sent: int = 0  # streaming: calls sent so far (their `index`)
    chat: bool = False
    images: tuple[ImageInput, ...] = ()  # the prompt's images, on its image tokens

    @property
    def finish_reason(self) -> str | None:
        """The stream's, or `tool_calls` when the answer ended with calls."""
        reason = self.stream.finish_reason
        if reason == "stop" and self.tools is not None and self.tools.calls:
            return "tool_calls"
        return reason


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class GenerationHandler:
    """Serves both generation endpoints from a parsed `GenerationRequest`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._harmony: tuple[TextTokenizer | None, HarmonyTokens | None] | None = None

    # -- preparing -----------------------------------------------------------------------
    async def _prompt_ids(self, gen: GenerationRequest) -> tuple[list[list[int]], tuple[ImageInput, ...]]:
        """The token ids of each prompt, and the chat prompt's images (placed on its image
        tokens, which count against the context length like any token)."""
        tokenizer = self.state.tokenizer
        if tokenizer is None:
            _check_tokenizer_free(gen)
        try:
            if gen.chat_messages is not None:
                messages, template_kwargs = self._chat_inputs(gen)
                if gen.images:
                    ids, images = await self._encode_with_images(gen, messages, template_kwargs)
                    return [ids], images
                return [await asyncio.to_thread(tokenizer.encode_chat, messages, template_kwargs)], ()
            out = []
            for prompt in gen.prompts:
                if isinstance(prompt, str):
                    out.append(await asyncio.to_thread(tokenizer.encode, prompt))
                else:
                    bad = next((t for t in prompt if not 0 <= t < self.state.vocab_size), None)
                    if bad is not None:
                        raise invalid("prompt", f"token id {bad} is outside the vocabulary (size {self.state.vocab_size})")
                    out.append(list(prompt))
            if tokenizer is not None and tokenizer.takes_images:
                _refuse_image_tokens(out, tokenizer.image_token_id)
            return out, ()
        except MaxError as e:
            raise ApiError(400, str(e), param="messages" if gen.chat_messages else "prompt") from None

    async def _encode_with_images(
        self, gen: GenerationRequest, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None,
        add_generation_prompt: bool = True,
    ) -> tuple[list[int], tuple[ImageInput, ...]]:
        """A chat with images: the images loaded (in threads), processed, and their
        placeholders expanded; 400 naming the image that cannot be used."""
        tokenizer = self.state.tokenizer
        if not tokenizer.takes_images:
            raise images_not_supported(gen.images)
        pictures = await load_request_images(gen.images, self.state.media)
        ids, images = await asyncio.to_thread(
            tokenizer.encode_chat_with_images, messages, pictures, template_kwargs, add_generation_prompt
        )
        return ids, tuple(images)

    def _chat_inputs(self, gen: GenerationRequest) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The messages and template variables the chat template renders: the tools (unless
        tool_choice is none) for a template that knows them, else the hermes fallback."""
        template_kwargs = {"reasoning_effort": gen.reasoning_effort} if gen.reasoning_effort else {}
        messages = gen.chat_messages
        tools = gen.tools if gen.tool_choice != "none" else None
        if template_knows_tools(self.state.tokenizer.hf.chat_template):
            if tools:
                template_kwargs["tools"] = tools
        elif tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            messages = messages_without_tool_fields(messages, tools)
        return messages, template_kwargs or None

    def _tool_format(self) -> str:
        """The tool-call format of the served model (hermes for templates without tools)."""
        template = self.state.tokenizer.hf.chat_template
        return detect_format(template) if template_knows_tools(template) else HERMES

    def _force_tool_calls(self, gen: GenerationRequest) -> None:
        """tool_choice required or named: a grammar lets the model write only calls."""
        if gen.params.structured_output is not None:
            raise invalid(gen.constraint_param, f"'tool_choice': {gen.tool_choice!r} cannot be combined with an output constraint")
        tools = gen.tools
        if isinstance(gen.tool_choice, dict):
            tools = [t for t in tools if t["function"]["name"] == gen.tool_choice["function"]["name"]]
        tokenizer = self.state.tokenizer
        tags = [tokenizer.encode(tag, add_special_tokens=False) for tag in TAGS]
        tag_ids = (tags[0][0], tags[1][0]) if all(len(ids) == 1 for ids in tags) else None
        grammar = tool_call_grammar(tools, self._tool_format(), gen.parallel_tool_calls, tag_ids)
        gen.params.structured_output = StructuredOutput("lark", grammar)
        gen.constraint_param = "tools"

    async def _check_constraint(self, gen: GenerationRequest) -> None:
        """Compiles the request's output constraint (cached), so that a bad schema or an
        unsupported feature is a 400 naming it, before the engine sees the request."""
        param = gen.constraint_param
        if self.state.tokenizer is None:
            raise ApiError(400, "structured outputs need a tokenizer (this server runs with --skip-tokenizer-init)",
                           param=param, code="tokenizer_required")  # fmt: skip
        try:
            await asyncio.to_thread(grammar_for, gen.params.structured_output)
        except MaxError as e:
            raise ApiError(400, str(e), param=param, code="unsupported_constraint") from None

    def _harmony_parser(self, prompt_ids: list[int]) -> HarmonyParser | None:
        """A parser of the harmony channels, for a harmony model's chat choice (else None)."""
        tokenizer = self.state.tokenizer
        if self._harmony is None or self._harmony[0] is not tokenizer:
            self._harmony = (tokenizer, HarmonyTokens.find(tokenizer))
        tokens = self._harmony[1]
        return HarmonyParser(tokenizer, tokens, prompt_ids) if tokens is not None else None

    def _choices(
        self, gen: GenerationRequest, prompt_ids: list[list[int]], base_id: str, images: tuple[ImageInput, ...] = ()
    ) -> list[_Choice]:
        limit = self.state.max_seq_len
        choices = []
        for p, ids in enumerate(prompt_ids):
            if not ids:
                raise invalid("prompt", "the prompt is empty")
            if gen.max_tokens is None:
                max_new = limit - len(ids)
                if max_new < 1:
                    raise ApiError(
                        400,
                        f"the prompt has {len(ids)} tokens; the model's context length is {limit} tokens",
                        param="messages" if gen.chat_messages else "prompt",
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
                seed = None if gen.params.seed is None else gen.params.seed + i
                params = dataclasses.replace(
                    gen.params,
                    max_new_tokens=max_new,
                    seed=seed,
                    logprobs=gen.logprobs,
                    prompt_logprobs=gen.logprobs if (gen.echo and gen.logprobs is not None) else None,
                    stop=list(gen.params.stop),
                )
                stream = RequestTextStream(self.state.tokenizer, ids, params)
                harmony = self._harmony_parser(ids) if gen.chat_messages is not None else None
                tools = ToolCallParser(self._tool_format()) if gen.tools and gen.tool_choice != "none" else None
                choices.append(
                    _Choice(len(choices), f"{base_id}-{p}-{i}", p, ids, stream, harmony=harmony, tools=tools,
                            chat=gen.chat_messages is not None, images=images)
                )  # fmt: skip
        return choices

    # -- running -------------------------------------------------------------------------
    async def _run_choice(self, choice: _Choice, sink: asyncio.Queue | None) -> None:
        """Drives one choice to its end; pushes (choice, delta) to `sink` when streaming."""
        engine = self.state.engine
        start = time.monotonic()
        outputs = engine.generate(choice.request_id, choice.prompt_ids, choice.stream.params, images=choice.images)
        try:
            await self._consume(choice, outputs, sink, start)
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

    async def _consume(self, choice: _Choice, outputs, sink: asyncio.Queue | None, start: float) -> None:
        metrics = self.state.metrics
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
            delta = choice.stream.update(output)
            if choice.harmony is not None:
                delta = choice.harmony.split(delta)
            if choice.tools is not None:
                delta = _split_tool_calls(choice.tools, delta)
            if delta.logprobs and choice.chat and delta.finished:
                delta = self._without_end_token(delta)
            if delta.logprobs:
                choice.logprobs.extend(delta.logprobs)
            if sink is not None:
                await sink.put((choice, delta))
            if choice.stream.finished:
                if delta.stopped_by_string:
                    self.state.engine.abort(choice.request_id)
                latency = time.monotonic() - start
                metrics.request_latency.observe(latency)
                metrics.vllm.finished(choice.finish_reason, len(choice.prompt_ids), len(choice.stream.token_ids), latency)
                return

    def _without_end_token(self, delta: TextDelta) -> TextDelta:
        """Chat logprobs cover the message's tokens: the end-of-turn token that finished
        it (EOS, which adds no text) is left out, as OpenAI does."""
        last = delta.logprobs[-1].token_id
        if delta.stopped_by_string or last not in self.state.tokenizer.eos_token_ids:
            return delta
        return dataclasses.replace(delta, logprobs=delta.logprobs[:-1])

    def _generation_error(self, message: str, server_error: bool = False) -> ApiError:
        """The error of a request the engine refused (400) or could not run (engine down: 500)."""
        if server_error:
            return ApiError(500, message, type="server_error")
        return ApiError(400, message)

    # -- endpoints -----------------------------------------------------------------------
    def _text_tokenizer(self, body: dict[str, Any]) -> TextTokenizer:
        """The tokenizer, for /tokenize and /detokenize (checks the body's model)."""
        if body.get("model") is not None and body["model"] != self.state.served_model_name:
            raise ApiError(400, f"model {body['model']!r} is not served here", param="model", code="model_not_found")
        if self.state.tokenizer is None:
            raise ApiError(400, "this server runs without a tokenizer (--skip-tokenizer-init)", code="tokenizer_required")
        return self.state.tokenizer

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize: `prompt` (with `add_special_tokens`) or chat `messages` (with
        `add_generation_prompt`, `tools`) to token ids; `return_token_strs` adds each token's text."""
        body = await read_json(request, self.state.limits)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        validate_body(TokenizeRequest, body)
        tokenizer = self._text_tokenizer(body)
        limit = self.state.limits.prompt_chars(self.state.max_seq_len)
        try:
            if "messages" in body:
                gen = parse_chat_request({**body, "model": self.state.served_model_name})
                check_prompt_chars(gen, limit)
                add_generation = body.get("add_generation_prompt", True)
                if not isinstance(add_generation, bool):
                    raise invalid("add_generation_prompt", "'add_generation_prompt' must be a boolean")
                messages, kwargs = self._chat_inputs(gen)
                if gen.images:  # the images' tokens are counted, so they are loaded
                    ids, _ = await self._encode_with_images(gen, messages, kwargs, add_generation)
                else:
                    text = await asyncio.to_thread(tokenizer.render_chat, messages, add_generation, kwargs)
                    ids = await asyncio.to_thread(tokenizer.encode, text, False)
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str):
                    raise invalid("prompt", "'prompt' (a string) or 'messages' is required")
                if len(prompt) > limit:
                    raise invalid("prompt", f"the prompt has {len(prompt)} characters, more than the limit of {limit}")
                special = body.get("add_special_tokens", True)
                if not isinstance(special, bool):
                    raise invalid("add_special_tokens", "'add_special_tokens' must be a boolean")
                ids = await asyncio.to_thread(tokenizer.encode, prompt, special)
        except MaxError as e:
            raise ApiError(400, str(e), param="messages" if "messages" in body else "prompt") from None
        out: dict[str, Any] = {"count": len(ids), "max_model_len": self.state.max_seq_len, "tokens": ids}
        if body.get("return_token_strs"):
            out["token_strs"] = [tokenizer.token_text(t) for t in ids]
        return JSONResponse(out)

    async def detokenize(self, request: Request) -> Response:
        """vLLM's /detokenize: `tokens` (ids) to the `prompt` text."""
        body = await read_json(request, self.state.limits)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        validate_body(DetokenizeRequest, body)
        tokenizer = self._text_tokenizer(body)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise invalid("tokens", "'tokens' must be a list of token ids")
        bad = next((t for t in ids if not 0 <= t < self.state.vocab_size), None)
        if bad is not None:
            raise invalid("tokens", f"token id {bad} is outside the vocabulary (size {self.state.vocab_size})")
        return JSONResponse({"prompt": await asyncio.to_thread(tokenizer.decode, ids, False)})

    async def handle(self, request: Request, chat: bool) -> Response:
        state = self.state
        body = await read_json(request, state.limits)
        validate_body(ChatCompletionRequest if chat else CompletionRequest, body)
        gen = parse_chat_request(body) if chat else parse_completion_request(body)
        if gen.model != state.served_model_name:
            raise ApiError(
                400,
                f"model {gen.model!r} is not served here; this server serves {state.served_model_name!r}",
                param="model",
                code="model_not_found",
            )
        if not state.engine.alive:
            raise ApiError(
                503, "the engine is not running; retry later", type="server_error", code="engine_unavailable",
                headers={"Retry-After": str(state.limits.retry_after_seconds)},
            )  # fmt: skip
        check_prompt_chars(gen, state.limits.prompt_chars(state.max_seq_len))
        if gen.tools and state.tokenizer is not None and (gen.tool_choice == "required" or isinstance(gen.tool_choice, dict)):
            self._force_tool_calls(gen)
        if gen.params.structured_output is not None:
            await self._check_constraint(gen)
        prompt_ids, images = await self._prompt_ids(gen)
        base_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        choices = self._choices(gen, prompt_ids, base_id, images)
        if state.metrics.in_flight + len(choices) > state.limits.max_queue_size:
            raise queue_full(state.limits.max_queue_size, state.limits.retry_after_seconds)
        state.metrics.prompt_tokens += sum(len(ids) for ids in prompt_ids)
        state.metrics.vllm.prompt_processed(state.served_model_name, sum(len(ids) for ids in prompt_ids))
        if state.log_requests:
            logger.info("%s: %d prompt(s), %d choice(s), stream=%s", base_id, len(prompt_ids), len(choices), gen.stream)
        if gen.stream:
            return StreamingResponse(
                self._stream(request, gen, chat, choices, base_id, prompt_ids),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(request, gen, chat, choices, base_id, prompt_ids)

    def _want_ids(self, gen: GenerationRequest) -> bool:
        """Whether choices carry their token ids (asked for, or no tokenizer to make text)."""
        return gen.return_token_ids or self.state.tokenizer is None

    async def _complete(self, request, gen, chat, choices, base_id, prompt_ids) -> Response:
        state = self.state
        state.metrics.in_flight += len(choices)
        tasks = [asyncio.create_task(self._run_choice(c, None)) for c in choices]
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
            raise self._generation_error(failed.error, failed.server_error)
        tokenizer = state.tokenizer
        use = _usage(choices, prompt_ids)
        if chat:
            body = [
                {
                    "index": c.index,
                    "message": _chat_message(c),
                    "logprobs": responses.chat_logprobs(tokenizer, c.logprobs) if gen.logprobs is not None else None,
                    "finish_reason": c.finish_reason,
                    **self._ids_fields(gen, c),
                }
                for c in choices
            ]
            return JSONResponse(responses.chat_completion(base_id, gen.model, body, use))
        out = []
        for c in choices:
            text, logprobs = c.stream.text, None
            prefix = ""
            if gen.echo and tokenizer is not None:
                prefix = tokenizer.decode(c.prompt_ids)
                text = prefix + text
            if gen.logprobs is not None:
                ids = c.stream.token_ids[: len(c.logprobs)]
                entries: list[TokenLogprob | None] = list(c.logprobs)
                if gen.echo:
                    prompt_entries = c.stream.prompt_logprobs or [None] * len(c.prompt_ids)
                    ids = c.prompt_ids + ids
                    entries = list(prompt_entries) + entries
                logprobs = responses.completion_logprobs(tokenizer, entries, ids)
            out.append(
                {
                    "index": c.index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": c.stream.finish_reason,
                    **self._ids_fields(gen, c),
                }
            )
        return JSONResponse(responses.text_completion(base_id, gen.model, out, use))

    def _ids_fields(self, gen: GenerationRequest, choice: _Choice, new_ids: list[int] | None = None) -> dict[str, Any]:
        """`token_ids` (and, when asked for, `prompt_token_ids`) of a choice or a chunk."""
        if not self._want_ids(gen):
            return {}
        fields: dict[str, Any] = {}
        if gen.return_token_ids and new_ids is None:
            fields["prompt_token_ids"] = list(choice.prompt_ids)
        fields["token_ids"] = list(choice.stream.token_ids if new_ids is None else new_ids)
        return fields

    async def _stream(self, request, gen, chat, choices, base_id, prompt_ids) -> AsyncIterator[str]:
        state = self.state
        tokenizer = state.tokenizer
        sink: asyncio.Queue = asyncio.Queue()
        state.metrics.in_flight += len(choices)
        tasks = [asyncio.create_task(self._run_choice(c, sink)) for c in choices]
        remaining = len(choices)
        try:
            if chat:
                for c in choices:
                    first = {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    yield _sse(responses.chunk(base_id, gen.model, True, [first]))
            elif gen.echo and tokenizer is not None:
                for c in choices:
                    echo = {"index": c.index, "text": tokenizer.decode(c.prompt_ids), "logprobs": None, "finish_reason": None}
                    yield _sse(responses.chunk(base_id, gen.model, False, [echo]))
            want_ids = self._want_ids(gen)
            while remaining:
                waiting = [await sink.get()]
                while not sink.empty():
                    waiting.append(sink.get_nowait())
                for choice, delta in _merge_waiting(waiting):
                    if delta is None:  # the engine refused or failed this request
                        yield _sse(self._generation_error(choice.error or "generation failed", choice.server_error).body())
                        remaining -= 1
                        continue
                    if (
                        not delta.text
                        and not delta.reasoning_text
                        and not delta.finished
                        and not (gen.logprobs is not None and delta.logprobs)
                        and not (want_ids and delta.token_ids)
                        and not delta.tool_calls
                    ):
                        continue
                    finish = choice.finish_reason if delta.finished else None
                    if chat:
                        logprobs = None
                        if gen.logprobs is not None and delta.logprobs:
                            logprobs = responses.chat_logprobs(tokenizer, delta.logprobs)
                        item = {"index": choice.index, "delta": _chat_delta(delta, finish, choice), "logprobs": logprobs, "finish_reason": finish}
                    else:
                        logprobs = None
                        if gen.logprobs is not None and delta.logprobs:
                            logprobs = responses.completion_logprobs(tokenizer, list(delta.logprobs), [e.token_id for e in delta.logprobs])
                        item = {"index": choice.index, "text": delta.text, "logprobs": logprobs, "finish_reason": finish}
                    if want_ids:
                        item.update(self._ids_fields(gen, choice, delta.token_ids))
                    yield _sse(responses.chunk(base_id, gen.model, chat, [item]))
                    if delta.finished:
                        remaining -= 1
            if gen.include_usage:
                yield _sse(responses.chunk(base_id, gen.model, chat, [], _usage(choices, prompt_ids)))
            yield "data: [DONE]\n\n"
        finally:
            # Reached also when the client disconnects (the response task is cancelled):
            # cancelling the choice tasks aborts their requests in the engine.
            for t in tasks:
                t.cancel()
            state.metrics.in_flight -= len(choices)


def _merge_waiting(waiting: list[tuple[_Choice, TextDelta | None]]) -> list[tuple[_Choice, TextDelta | None]]:
    """Consecutive deltas of one choice as one: a stream that fell behind the engine (each
    chunk costs the event loop tens of microseconds, and thousands of tokens a second arrive
    at high concurrency) catches up in fewer, larger chunks. Errors stay on their own."""
    merged: list[tuple[_Choice, TextDelta | None]] = []
    for choice, delta in waiting:
        if merged and merged[-1][0] is choice and delta is not None:
            last = merged[-1][1]
            if last is not None and not last.finished:
                merged[-1] = (choice, last.followed_by(delta))
                continue
        merged.append((choice, delta))
    return merged


def _chat_message(choice: _Choice) -> dict[str, Any]:
    """A chat choice's message; a harmony model's reasoning goes to `reasoning_content`,
    tool calls to `tool_calls` (the content is then what is left, or null)."""
    if choice.harmony is None:
        message = {"role": "assistant", "content": choice.stream.text}
    else:
        message = {"role": "assistant", "content": choice.harmony.content, "reasoning_content": choice.harmony.reasoning or None}
    if choice.tools is not None:
        message["content"] = choice.tools.content.strip() or None
        if choice.tools.calls:
            message["tool_calls"] = [_tool_call(call) for call in choice.tools.calls]
    return message


def _tool_call(call, index: int | None = None) -> dict[str, Any]:
    body = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return body if index is None else {"index": index, **body}


def _split_tool_calls(parser: ToolCallParser, delta: TextDelta) -> TextDelta:
    """`delta` with the text of tool calls taken out of its content and the calls it
    completes in `tool_calls`."""
    content, calls = parser.feed(delta.text)
    if delta.finished:
        rest, more = parser.finish()
        content, calls = content + rest, calls + more
    return dataclasses.replace(delta, text=content, tool_calls=calls)


def _chat_delta(delta: TextDelta, finish: str | None, choice: _Choice) -> dict[str, Any]:
    """A streamed chat chunk's `delta`: new reasoning, content and/or tool calls (an empty
    content unless the chunk only finishes the choice or carries calls)."""
    body: dict[str, Any] = {}
    if delta.reasoning_text:
        body["reasoning_content"] = delta.reasoning_text
    if delta.tool_calls:
        body["tool_calls"] = [_tool_call(call, choice.tool_calls_sent + i) for i, call in enumerate(delta.tool_calls)]
        choice.tool_calls_sent += len(delta.tool_calls)
    if delta.text or not (finish or body):
        body["content"] = delta.text
    return body


def _refuse_image_tokens(prompts: list[list[int]], image_token_id: int) -> None:
    """A completion prompt may not hold a vision model's image token: no image would fill it."""
    if any(image_token_id in ids for ids in prompts):
        raise MaxError(
            f"the prompt holds the image token (id {image_token_id}); send images as image_url parts "
            "of a chat message instead"
        )


def _check_tokenizer_free(gen: GenerationRequest) -> None:
    """Refuses what needs a tokenizer, on a server started without one."""
    why = "this server runs without a tokenizer (--skip-tokenizer-init)"
    if gen.chat_messages is not None:
        raise ApiError(
            400,
            f"{why}: chat completions need one; send token-id prompts to /v1/completions",
            param="messages",
            code="tokenizer_required",
        )
    if any(isinstance(p, str) for p in gen.prompts):
        raise ApiError(
            400,
            f"{why}: 'prompt' must be token ids (a list of integers, or a list of such lists)",
            param="prompt",
            code="tokenizer_required",
        )
    if gen.params.stop:
        raise ApiError(400, f"{why}: 'stop' strings need one; use 'stop_token_ids'", param="stop", code="tokenizer_required")


def _usage(choices: list[_Choice], prompt_ids: list[list[int]]) -> dict[str, int]:
    """Usage of a request: each prompt counted once, every choice's tokens."""
    return responses.usage(sum(len(ids) for ids in prompt_ids), sum(len(c.stream.token_ids) for c in choices))


# Characters that str.splitlines() (and line readers built on it, like httpx's) take for
# line ends, which JSON leaves raw: escaped, so that no event is cut in two.
_LINE_BREAKS_JSON_KEEPS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _sse(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False).translate(_LINE_BREAKS_JSON_KEEPS)
    return f"data: {text}\n\n"


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes its connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(state: ServerState, lifespan=None) -> Starlette:
    """The ASGI application (`lifespan`: starlette lifespan context, e.g. engine attach)."""
    handler = GenerationHandler(state)
    state.metrics.vllm.model_name = state.served_model_name

    async def chat_completions(request: Request) -> Response:
        return await handler.handle(request, chat=True)

    async def completions(request: Request) -> Response:
        return await handler.handle(request, chat=False)

    async def tokenize(request: Request) -> Response:
        return await handler.tokenize(request)

    async def detokenize(request: Request) -> Response:
        return await handler.detokenize(request)

    openapi = openapi_document()

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": state.served_model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "max",
                        "max_model_len": state.max_seq_len,
                    }
                ],
            }
        )

    async def health(request: Request) -> Response:
        detail = redact(state.engine.failure) if state.engine.failure else None
        if state.draining:
            return JSONResponse({"status": "draining", "detail": "the server is shutting down"}, status_code=503)
        if not state.engine.alive:
            return JSONResponse({"status": "engine unavailable", "detail": detail}, status_code=503)
        if detail:  # some data-parallel replicas are down, the others serve
            return JSONResponse({"status": "degraded", "detail": detail})
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        state.metrics.read_engine(state.engine)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    async def api_error(request: Request, exc: ApiError) -> Response:
        state.metrics.error_answered(exc.code)
        return _error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        state.metrics.error_answered(kind)
        return _error_response(ApiError(exc.status_code, str(exc.detail), code=kind))

    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("internal error on %s", request.url.path)
        state.metrics.error_answered("internal_error")
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/detokenize", detokenize, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.add_middleware(HttpGuard, state=state)
    if state.allowed_origins:  # CORS is off unless origins are named (--allowed-origins)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
