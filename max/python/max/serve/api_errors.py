"""The error shape of the API: what a client reads when its request fails.

Every failure a client can cause (and every one it cannot) is answered as
`{"error": {"message", "type", "param", "code"}}` with the status the `ApiError` carries;
the app's exception handlers (api_server.py) and the HTTP guard turn an `ApiError` into that
answer.
"""

from __future__ import annotations

from typing import Any

from max.serve.error_redaction import redact


class ApiError(Exception):
    """An error answered to the client in OpenAI's JSON shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers  # e.g. Retry-After on 429 and 503

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response (a server error's message without internals)."""
        message = redact(self.message) if self.status >= 500 else self.message
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


# Anthropic's names of the error kinds, by status (its clients raise their exceptions from them).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}  # fmt: skip
ANTHROPIC_PATH_PREFIX = "/v1/messages"


class AnthropicError(ApiError):
    """An error answered in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""

    def body(self) -> dict[str, Any]:
        message = redact(self.message) if self.status >= 500 else self.message
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


def for_path(error: ApiError, path: str) -> ApiError:
    """`error` in the shape the route's clients read: Anthropic's on /v1/messages routes."""
    if path.startswith(ANTHROPIC_PATH_PREFIX) and not isinstance(error, AnthropicError):
        return AnthropicError(error.status, error.message, error.type, error.param, error.code, error.headers)
    return error


def invalid(param: str, message: str) -> ApiError:
    """A 400 about one parameter."""
    return ApiError(400, message, param=param, code="invalid_parameter")
