"""The API's bodies as pydantic models, and the OpenAPI document built from them.

Request bodies are validated against these models first (types and shapes: a wrong type is
a 400 naming the field's path, e.g. `messages[0].content`; fields the models do not know
are accepted and ignored, as OpenAI does); openai_protocol.py then checks ranges and the
rules between fields and builds the engine's request. Response models describe what the
handlers send; they serve the OpenAPI document (`GET /openapi.json`, OpenAPI 3.1), which
lists every route.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from max.serve.openai_protocol import ApiError


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# -- requests ----------------------------------------------------------------------------
class ImageUrl(_Body):
    url: str = Field(description="a data URL (data:image/png;base64,...), an http(s) URL, or a file:// URL "
                     "under the server's --allowed-local-media-path")
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Body):
    type: str = Field(description="text or image_url")
    text: str | None = None
    image_url: ImageUrl | str | None = None


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] | None = None  # JSON text (OpenAI) or an object


class ToolCallMessage(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: str = Field(description="system, developer, user, assistant or tool")
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallMessage] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON schema of the arguments")


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: str = Field(description="text, json_object or json_schema")
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Body):
    """vLLM's structured outputs: one of these."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = Field(default=None, description="a Lark grammar")
    json_object: bool | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Generation(_Body):
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    return_token_ids: bool | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage]
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool | None = None
    tools: list[Tool] | None = None
    return_token_strs: bool | None = None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


# -- responses ---------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobs(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobs] | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`data: {...}`, then `data: [DONE]`)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class Completion(BaseModel):
    """A completion, or (streamed, `object` text_completion too) one event of one."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    detail: str | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


# -- validation --------------------------------------------------------------------------
_UNION_TAGS = ("str", "int", "float", "bool", "dict", "list", "function-after", "literal")


def _path(loc: tuple[Any, ...]) -> str:
    """`messages[0].content` from pydantic's location (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif any(part.startswith(tag) for tag in _UNION_TAGS) or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def validate_body(model: type[BaseModel], body: Any) -> None:
    """Raises a 400 naming the first field of `body` (a JSON object) whose type is wrong."""
    if not isinstance(body, dict):
        return  # the parser answers that one
    try:
        model.model_validate(body)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        # Of a union's alternatives, the one that got furthest names the field best.
        first = max(errors, key=lambda err: _path(err["loc"]).count(".") + _path(err["loc"]).count("["))
        path = _path(first["loc"]) or None
        missing = first["type"] == "missing"
        message = f"'{path}' is required" if missing else f"'{path}': {first['msg']}"
        raise ApiError(400, message, param=path, code="invalid_parameter") from None


# -- OpenAPI -----------------------------------------------------------------------------
def openapi_document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: str) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def json_content(model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        return {"application/json": {"schema": ref(model, mode)}}

    error = {"description": "an error, in OpenAI's shape", "content": json_content(ErrorResponse)}
    errors = {status: error for status in ("400", "401", "408", "413", "429", "500", "503")}

    def generation(summary: str, request: type[BaseModel], response: type[BaseModel], chunk: type[BaseModel]):
        events = {"type": "string", "description": f"server-sent events: `data: <{chunk.__name__}>` lines, then `data: [DONE]`"}
        ref(chunk, "serialization")
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": json_content(request, "validation")},
                "responses": {
                    "200": {
                        "description": "the completion (`stream`: the events)",
                        "content": {**json_content(response), "text/event-stream": {"schema": events}},
                    },
                    **errors,
                },
            }
        }

    def simple(method: str, summary: str, response: dict[str, Any], request: type[BaseModel] | None = None):
        operation: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK", "content": response}}}
        if request is not None:
            operation["requestBody"] = {"required": True, "content": json_content(request, "validation")}
            operation["responses"].update(errors)
        return {method: operation}

    health = simple("get", "Whether the engine serves (503 while it is down or draining)", json_content(Health))
    health["get"]["responses"]["503"] = {"description": "not serving", "content": json_content(Health)}
    paths = {
        "/v1/chat/completions": generation("Chat completion", ChatCompletionRequest, ChatCompletion, ChatCompletionChunk),
        "/v1/completions": generation("Text completion", CompletionRequest, Completion, Completion),
        "/v1/models": simple("get", "The served model", json_content(ModelList)),
        "/tokenize": simple("post", "Token ids of a prompt or a chat", json_content(TokenizeResponse), TokenizeRequest),
        "/detokenize": simple("post", "Text of token ids", json_content(DetokenizeResponse), DetokenizeRequest),
        "/health": health,
        "/v1/health": health,
        "/metrics": simple("get", "Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}}),
        "/openapi.json": simple("get", "This document", {"application/json": {"schema": {"type": "object"}}}),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "max serve: OpenAI-compatible API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
