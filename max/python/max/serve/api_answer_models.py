"""The answers of /v1/messages (Anthropic's shapes) and /v1/responses (OpenAI's Responses
shapes) as pydantic models, for the OpenAPI document (openapi.py); the handlers build
them as plain dicts (messages_handler.py, responses_rendering.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


# -- Anthropic Messages ---------------------------------------------------------------------
class MessageBlock(BaseModel):
    """A content block of an answer: text, thinking, or tool_use (its input an object)."""

    type: Literal["text", "thinking", "tool_use"]
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None


class MessageUsage(BaseModel):
    input_tokens: int  # prompt tokens not read from the prefix cache
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class AnthropicMessageAnswer(BaseModel):
    """The answer of POST /v1/messages (`stream`: Anthropic's events, each `event: NAME`
    and `data: {...}`: message_start, content_block_start/delta/stop, message_delta,
    message_stop)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[MessageBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """An error on /v1/messages routes."""

    type: Literal["error"]
    error: AnthropicErrorDetail


# -- OpenAI Responses -----------------------------------------------------------------------
class OutputPart(BaseModel):
    type: Literal["output_text", "reasoning_text"]
    text: str
    annotations: list[Any] | None = None


class OutputItem(BaseModel):
    """An output item: reasoning, message (output_text parts) or function_call."""

    type: Literal["reasoning", "message", "function_call"]
    id: str
    status: str
    role: Literal["assistant"] | None = None
    content: list[OutputPart] | None = None
    summary: list[Any] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseObject(BaseModel):
    """A response of POST /v1/responses (and GET /v1/responses/{id}); `stream`: OpenAI's
    events (`event: NAME` and `data: {...}`), response.created ... response.completed."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    model: str
    instructions: str | None
    output: list[OutputItem]
    usage: ResponseUsage | None
    previous_response_id: str | None
    store: bool
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    text: dict[str, Any]


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool
