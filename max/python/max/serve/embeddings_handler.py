"""OpenAI's POST /v1/embeddings, on a server started with `--task embed`.

Each input (embeddings_request.py) is tokenized here (with the tokenizer's special tokens,
as sentence-transformers tokenizes) and runs in the engine as its own embedding request:
prompt-only, pooled instead of sampled (`max.pipelines.lib.pooling`), batched with the
others. The answer lists the vectors in input order, as float lists or base64 float32
bytes, with the prompt tokens as usage.

As in vLLM, a server serves one task: on an embedding server the generation routes answer
400 ("does not support the ... API"), and on a generation server this route does.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from max.errors import MaxError
from max.pipelines.lib import SamplingParams
from max.pipelines.lib.pooling.pooling_params import PoolingParams
from max.serve.api_errors import ApiError, invalid
from max.serve.embeddings_request import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from max.serve.generation_handler import generation_error
from max.serve.lora_handler import served_adapter
from max.serve.request_limits import check_prompt_chars, read_json
from max.serve.server_state import ServerState

Handler = Callable[[Request], Awaitable[Response]]


def generation_route(state: ServerState, handler: Handler, api: str) -> Handler:
    """`handler` of a generation route, answering 400 on a server that embeds."""

    async def route(request: Request) -> Response:
        if state.embedding is not None:
            raise ApiError(
                400, f"The model does not support the {api} API: this server runs --task embed",
                code="unsupported_task",
            )  # fmt: skip
        return await handler(request)

    return route


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as the client asked: numbers, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


class EmbeddingsHandler:
    """Serves /v1/embeddings (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response:
        """Answers one request: every input's embedding."""
        state = self.state
        body = await read_json(request, state.limits)
        if state.embedding is None:
            raise ApiError(
                400, "The model does not support the Embeddings API: start the server with --task embed",
                code="unsupported_task",
            )  # fmt: skip
        emb = EmbeddingRequest.from_json(body)
        model = state.served_model_name if emb.model is None else emb.model
        if served_adapter(state, model) is not None:
            raise invalid("model", "LoRA adapters do not serve embeddings")
        try:
            state.embedding.check_dimensions(emb.dimensions)
        except MaxError as e:
            raise invalid("dimensions", str(e)) from None
        if not state.engine.alive:
            raise ApiError(503, "the engine is not running; retry later", type="server_error", code="engine_unavailable",
                           headers={"Retry-After": str(state.limits.retry_after_seconds)})  # fmt: skip
        prompts = await self._prompts(emb)
        base_id = f"embd-{uuid.uuid4().hex}"
        params = SamplingParams(max_new_tokens=0, pooling=PoolingParams(emb.dimensions))
        tokens = sum(len(ids) for ids in prompts)
        state.metrics.prompt_tokens += tokens
        state.metrics.in_flight += len(prompts)
        tasks = [
            asyncio.create_task(self._embed(f"{base_id}-{i}", ids, params))
            for i, ids in enumerate(prompts)
        ]
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        work = asyncio.gather(*tasks)
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:  # the client left: its requests are aborted in the engine
                return Response(status_code=499)
            vectors = work.result()
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()  # a request still running (another one failed) is aborted
            await asyncio.gather(work, return_exceptions=True)
            state.metrics.in_flight -= len(prompts)
        answer = EmbeddingResponse(
            id=base_id,
            created=int(time.time()),
            model=model,
            data=[
                EmbeddingData(embedding=encode_vector(v, emb.encoding_format), index=i)
                for i, v in enumerate(vectors)
            ],
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return JSONResponse(answer.model_dump())

    async def _prompts(self, emb: EmbeddingRequest) -> list[list[int]]:
        """Each input's token ids, each within the vocabulary and the model's length."""
        state = self.state
        texts = emb.texts
        if texts is not None:
            if state.tokenizer is None:
                raise ApiError(400, "text input needs a tokenizer (this server runs with --skip-tokenizer-init): "
                               "send token ids", param="input", code="tokenizer_required")  # fmt: skip
            check_prompt_chars(
                emb.prompt_chars(), "input", state.limits.prompt_chars(state.max_seq_len)
            )
            tokenizer = state.tokenizer
            prompts = await asyncio.to_thread(lambda: [tokenizer.encode(t) for t in texts])
        else:
            prompts = emb.token_lists
            for i, ids in enumerate(prompts):
                bad = next((t for t in ids if not 0 <= t < state.vocab_size), None)
                if bad is not None:
                    raise invalid(
                        "input",
                        f"token id {bad} of input {i} is outside the vocabulary (size {state.vocab_size})",
                    )
        for i, ids in enumerate(prompts):
            if not ids:
                raise invalid("input", f"input {i} has no tokens")
            if len(ids) > state.max_seq_len:
                raise ApiError(
                    400, f"input {i} has {len(ids)} tokens; the model's maximum context length is "
                    f"{state.max_seq_len} tokens: reduce the length of the input",
                    param="input", code="context_length_exceeded",
                )  # fmt: skip
        return prompts

    async def _embed(self, request_id: str, ids: list[int], params: SamplingParams) -> list[float]:
        """One input's vector, from its engine request."""
        vector: list[float] | None = None
        async for output in self.state.engine.generate(request_id, ids, params):
            if output.error is not None:
                raise generation_error(output.error, output.server_error)
            if output.embedding is not None:
                vector = output.embedding
        if vector is None:
            raise ApiError(500, "the engine answered without an embedding", type="server_error")
        return vector


async def _wait_for_disconnect(request: Request) -> Any:
    """Returns when the client closes its connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return None
