"""The gate every HTTP request passes before its handler: API key, admission, deadline.

In order:
- `/health` is always open (orchestrators probe it without credentials); `/metrics` too
  unless `--require-api-key-for-metrics`. Every other route needs
  `Authorization: Bearer KEY` when the server has an API key, compared in constant time.
- Generation requests (`POST /v1/chat/completions`, `/v1/completions`) are refused with
  503 while the server drains (SIGTERM), and with 429 and `Retry-After` when
  `--max-queue-size` of them are in the server already. A request holds its place from
  its first byte to its last, so the memory requests take stays bounded (at most
  max-queue-size x max-request-body-bytes of bodies).
- With `--request-timeout`, a generation request that is not done in time is cancelled
  (its engine requests are aborted) and answered 408; a stream already under way ends
  with an error event instead.
- Answers on /v1 routes are counted by status for /metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from max.serve.api_errors import ApiError, for_path
from max.serve.server_state import ServerState

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses", "/v1/embeddings"})
HEALTH_PATHS = frozenset({"/health", "/v1/health"})
METRICS_PATH = "/metrics"


class HttpGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        counted = path.startswith("/v1/")
        send = self._counting(send) if counted else send
        if path in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        if self._needs_key(path) and not self._key_matches(scope):
            error = ApiError(401, "invalid or missing API key", type="authentication_error", code="invalid_api_key")
            await self._refuse(error, scope, receive, send)
            return
        if not (path in GENERATION_PATHS and scope["method"] == "POST"):
            await self.app(scope, receive, send)
            return
        refusal = self._admission_refusal()
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
            return
        self.state.active_requests += 1
        try:
            await self._run_with_deadline(scope, receive, send)
        finally:
            self.state.active_requests -= 1

    # -- checks --------------------------------------------------------------------------
    def _needs_key(self, path: str) -> bool:
        if self.state.api_key is None:
            return False
        return path != METRICS_PATH or self.state.metrics_need_api_key

    def _key_matches(self, scope) -> bool:
        # `Authorization: Bearer KEY` (OpenAI's clients), or `x-api-key: KEY` (Anthropic's).
        auth = api_key = b""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                auth = value
            elif name == b"x-api-key":
                api_key = value
        expected = self.state.api_key.encode()
        bearer = hmac.compare_digest(auth, b"Bearer " + expected)
        return hmac.compare_digest(api_key, expected) if api_key else bearer

    def _admission_refusal(self) -> ApiError | None:
        state, limits = self.state, self.state.limits
        retry = {"Retry-After": str(limits.retry_after_seconds)}
        if state.draining:
            return ApiError(
                503, "the server is shutting down and takes no new requests", type="server_error",
                code="shutting_down", headers=retry,
            )  # fmt: skip
        if state.active_requests >= limits.max_queue_size:
            return queue_full(limits.max_queue_size, limits.retry_after_seconds)
        return None

    # -- running -------------------------------------------------------------------------
    async def _run_with_deadline(self, scope, receive, send) -> None:
        timeout = self.state.limits.request_timeout
        if timeout is None:
            await self.app(scope, receive, send)
            return
        response = _ResponseTracker(send)
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self.app(scope, receive, response.send)
        except TimeoutError:
            if not deadline.expired():
                raise
            error = ApiError(
                408,
                f"the request did not finish within {timeout:g} s (the server's --request-timeout)",
                code="request_timeout",
            )
            self.state.metrics.error_answered(error.code)
            await response.end_with(for_path(error, scope["path"]))

    async def _refuse(self, error: ApiError, scope, receive, send) -> None:
        self.state.metrics.error_answered(error.code)
        await _json_error(for_path(error, scope["path"]), send)

    def _counting(self, send):
        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.state.metrics.request_finished(message["status"])
            await send(message)

        return counting_send


def queue_full(limit: int, retry_after: int) -> ApiError:
    """The 429 of a full server, naming the limit."""
    return ApiError(
        429,
        f"the server has {limit} requests in progress, its limit (--max-queue-size); retry later",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after)},
    )


async def _json_error(error: ApiError, send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _ResponseTracker:
    """Remembers how far a response got, so that a cancelled request can still end it well."""

    def __init__(self, send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.event_stream = False

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers") or ())
            self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def end_with(self, error: ApiError) -> None:
        """Answers `error`, or ends a response under way (an SSE stream with an error event)."""
        if self.finished:
            return
        if not self.started:
            await _json_error(error, self._send)
            return
        tail = b""
        if self.event_stream:
            tail = f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n".encode()
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})
