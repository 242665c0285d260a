"""The OpenAPI 3.1 document of the server (`GET /openapi.json`), built from the request
and response models: every route, its body and its answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from max.serve.api_answer_models import (
    AnthropicError,
    AnthropicMessageAnswer,
    ResponseDeleted,
    ResponseObject,
    TokenCount,
)
from max.serve.chat_request import ChatCompletionRequest
from max.serve.completion_request import CompletionRequest
from max.serve.embeddings_request import EmbeddingRequest, EmbeddingResponse
from max.serve.lora_handler import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from max.serve.messages_request import CountTokensRequest, MessagesRequest
from max.serve.response_models import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelList,
    TokenizeResponse,
)
from max.serve.responses_request import ResponsesRequest
from max.serve.tokenize_request import DetokenizeRequest, TokenizeRequest


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
    anthropic_error = {"description": "an error, in Anthropic's shape", "content": json_content(AnthropicError)}
    anthropic_errors = {status: anthropic_error for status in errors}

    def api_route(summary: str, request: type[BaseModel], response: type[BaseModel], answer_errors: dict, events: str):
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": json_content(request, "validation")},
                "responses": {
                    "200": {
                        "description": "the answer (`stream`: the events)",
                        "content": {**json_content(response), "text/event-stream": {"schema": {"type": "string", "description": events}}},
                    },
                    **answer_errors,
                },
            }
        }

    stored = {"description": "not stored on this server", "content": json_content(ErrorResponse)}
    response_by_id = {
        "get": {"summary": "A stored response", "responses": {"200": {"description": "OK", "content": json_content(ResponseObject)}, "404": stored}},
        "delete": {"summary": "Forget a stored response", "responses": {"200": {"description": "OK", "content": json_content(ResponseDeleted)}, "404": stored}},
        "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    }  # fmt: skip
    text = {"text/plain": {"schema": {"type": "string"}}}
    paths = {
        "/v1/messages": api_route("Anthropic Messages", MessagesRequest, AnthropicMessageAnswer, anthropic_errors,
                                  "Anthropic's events: message_start, content_block_start, content_block_delta, "
                                  "content_block_stop, message_delta, message_stop"),  # fmt: skip
        "/v1/messages/count_tokens": {"post": {
            "summary": "Tokens of a Messages prompt",
            "requestBody": {"required": True, "content": json_content(CountTokensRequest, "validation")},
            "responses": {"200": {"description": "OK", "content": json_content(TokenCount)}, **anthropic_errors},
        }},  # fmt: skip
        "/v1/responses": api_route("OpenAI Responses", ResponsesRequest, ResponseObject, {**errors, "404": stored},
                                   "OpenAI's events: response.created, response.in_progress, response.output_item.added, "
                                   "... response.completed"),  # fmt: skip
        "/v1/responses/{response_id}": response_by_id,
        "/v1/chat/completions": generation("Chat completion", ChatCompletionRequest, ChatCompletion, ChatCompletionChunk),
        "/v1/completions": generation("Text completion", CompletionRequest, Completion, Completion),
        "/v1/embeddings": simple("post", "Embeddings of texts or token ids (--task embed)", json_content(EmbeddingResponse), EmbeddingRequest),
        "/v1/models": simple("get", "The served model", json_content(ModelList)),
        "/tokenize": simple("post", "Token ids of a prompt or a chat", json_content(TokenizeResponse), TokenizeRequest),
        "/detokenize": simple("post", "Text of token ids", json_content(DetokenizeResponse), DetokenizeRequest),
        "/health": health,
        "/v1/health": health,
        "/metrics": simple("get", "Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}}),
        "/openapi.json": simple("get", "This document", {"application/json": {"schema": {"type": "object"}}}),
        "/v1/load_lora_adapter": simple("post", "Load a LoRA adapter (--enable-lora)", text, LoadLoRAAdapterRequest),
        "/v1/unload_lora_adapter": simple("post", "Unload a LoRA adapter (--enable-lora)", text, UnloadLoRAAdapterRequest),
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
