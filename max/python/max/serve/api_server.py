"""The OpenAI-compatible HTTP API (starlette): the routes, and the app that serves them.

Routes: POST /v1/chat/completions (chat_handler.py), POST /v1/completions
(completion_handler.py), POST /v1/embeddings (embeddings_handler.py: `--task embed`), POST /tokenize and /detokenize (tokenize_handler.py), GET
/v1/models, GET /health (and /v1/health), GET /metrics, GET /openapi.json (openapi.py). The
HTTP process validates each body once (its request model: chat_request.py,
completion_request.py, tokenize_request.py), tokenizes, applies chat templates and
detokenizes; the engine process only sees token ids (and, for a vision-language model, the
chat's images, loaded and processed here: chat_images.py). Every failure a client can
cause is answered in OpenAI's error shape with a 4xx status (api_errors.py); a client that
disconnects has its requests aborted in the engine. What each request may cost (body size,
JSON depth, prompt characters) is checked in request_limits.py; the API key, admission
(429) and deadlines (408) in http_guard.py.
"""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from max.serve.api_errors import ApiError, for_path
from max.serve.chat_handler import ChatCompletionHandler
from max.serve.completion_handler import CompletionHandler
from max.serve.embeddings_handler import EmbeddingsHandler, generation_route
from max.serve.error_redaction import redact
from max.serve.http_guard import HttpGuard
from max.serve.lora_handler import LoRAHandler, adapter_model_cards
from max.serve.messages_handler import MessagesHandler
from max.serve.openapi import openapi_document
from max.serve.responses_handler import ResponsesHandler
from max.serve.server_state import ServerState
from max.serve.tokenize_handler import TokenizeHandler

__all__ = ["ServerState", "create_app"]  # ServerState lives in server_state.py; here for callers

logger = logging.getLogger("max.serve")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(state: ServerState, lifespan=None) -> Starlette:
    """The ASGI application (`lifespan`: starlette lifespan context, e.g. engine attach)."""
    chat = ChatCompletionHandler(state)
    completion = CompletionHandler(state)
    tokens = TokenizeHandler(state)
    messages = MessagesHandler(state)
    responses = ResponsesHandler(state)
    lora = LoRAHandler(state)
    embeddings = EmbeddingsHandler(state)
    state.metrics.vllm.model_name = state.served_model_name
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
                    },
                    *adapter_model_cards(state, int(time.time())),
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

    # Each error in the shape the route's clients read (Anthropic's on /v1/messages).
    async def api_error(request: Request, exc: ApiError) -> Response:
        state.metrics.error_answered(exc.code)
        return _error_response(for_path(exc, request.url.path))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        state.metrics.error_answered(kind)
        return _error_response(for_path(ApiError(exc.status_code, str(exc.detail), code=kind), request.url.path))

    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("internal error on %s", request.url.path)
        state.metrics.error_answered("internal_error")
        error = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return _error_response(for_path(error, request.url.path))

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", generation_route(state, chat.handle, "Chat Completions"), methods=["POST"]),
            Route("/v1/completions", generation_route(state, completion.handle, "Completions"), methods=["POST"]),
            Route("/v1/embeddings", embeddings.handle, methods=["POST"]),
            Route("/v1/messages", generation_route(state, messages.handle, "Messages"), methods=["POST"]),
            Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
            Route("/v1/responses", generation_route(state, responses.handle, "Responses"), methods=["POST"]),
            Route("/v1/responses/{response_id}", responses.get, methods=["GET"]),
            Route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/load_lora_adapter", lora.load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", lora.unload, methods=["POST"]),
            Route("/tokenize", tokens.tokenize, methods=["POST"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/detokenize", tokens.detokenize, methods=["POST"]),
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
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
