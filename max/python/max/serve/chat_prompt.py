"""A chat request's prompt: what the chat template renders, and its token ids.

Shared by the chat endpoint and /tokenize, so that /tokenize counts exactly the tokens a
chat completion would prompt. Tools go to the template when it knows them; otherwise, and
for a history with tool calls, they are written into the messages in the hermes format.
A chat with images has them loaded (chat_images.py), processed, and their placeholders
expanded into the image tokens they take.
"""

from __future__ import annotations

import asyncio
from typing import Any

from max.pipelines.lib import TextTokenizer
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.tokens.tool_calls import (
    HERMES,
    detect_format,
    messages_without_tool_fields,
    template_knows_tools,
)
from max.serve.chat_images import MediaOptions, images_not_supported, load_request_images
from max.serve.chat_request import ChatCompletionRequest


def template_inputs(
    tokenizer: TextTokenizer, chat: ChatCompletionRequest
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The messages and template variables the chat template renders: the tools (unless
    tool_choice is none) for a template that knows them, else the hermes fallback."""
    template_kwargs = chat.template_kwargs()
    messages = chat.conversation
    tools = chat.tool_specs if chat.tool_choice != "none" else None
    if template_knows_tools(tokenizer.hf.chat_template):
        if tools:
            template_kwargs["tools"] = tools
    elif tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        messages = messages_without_tool_fields(messages, tools)
    return messages, template_kwargs or None


def tool_format(tokenizer: TextTokenizer, chosen: str | None = None) -> str:
    """The tool-call format of the served model: `chosen` (--tool-call-parser), else the
    one its chat template shows (hermes for templates without tools)."""
    if chosen is not None:
        return chosen
    template = tokenizer.hf.chat_template
    return detect_format(template) if template_knows_tools(template) else HERMES


async def encode_with_images(
    tokenizer: TextTokenizer,
    media: MediaOptions,
    chat: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    template_kwargs: dict[str, Any] | None,
    add_generation_prompt: bool = True,
) -> tuple[list[int], tuple[ImageInput, ...]]:
    """A chat with images: the images loaded (in threads), processed, and their
    placeholders expanded; 400 naming the image that cannot be used."""
    if not tokenizer.takes_images:
        raise images_not_supported(chat.images)
    pictures = await load_request_images(chat.images, media)
    ids, images = await asyncio.to_thread(
        tokenizer.encode_chat_with_images, messages, pictures, template_kwargs, add_generation_prompt
    )
    return ids, tuple(images)
