"""vLLM's POST /tokenize and POST /detokenize.

/tokenize turns a `prompt` (with `add_special_tokens`) or chat `messages` (with
`add_generation_prompt`, `tools`) into token ids; `return_token_strs` adds each token's
text. A chat is checked as a chat completion request is, and rendered by the same template
inputs (chat_prompt.py), so that its count is what the chat endpoint would prompt; its
images are loaded, because their tokens count. /detokenize turns `tokens` back into text.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from max.errors import MaxError
from max.pipelines.lib import TextTokenizer
from max.serve.api_errors import ApiError
from max.serve.chat_prompt import encode_with_images, template_inputs
from max.serve.chat_request import ChatCompletionRequest
from max.serve.request_limits import check_prompt_chars, read_json
from max.serve.server_state import ServerState
from max.serve.tokenize_request import DetokenizeRequest, TokenizeRequest


class TokenizeHandler:
    """Serves /tokenize and /detokenize (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _tokenizer_for(self, model: str | None) -> TextTokenizer:
        """The tokenizer, for a body that names this server's model (or none)."""
        if model is not None and model != self.state.served_model_name:
            raise ApiError(400, f"model {model!r} is not served here", param="model", code="model_not_found")
        if self.state.tokenizer is None:
            raise ApiError(400, "this server runs without a tokenizer (--skip-tokenizer-init)", code="tokenizer_required")
        return self.state.tokenizer

    async def tokenize(self, request: Request) -> Response:
        """The token ids of a prompt or a chat."""
        body = await read_json(request, self.state.limits)
        tok = TokenizeRequest.from_json(body)
        tokenizer = self._tokenizer_for(tok.model)
        limit = self.state.limits.prompt_chars(self.state.max_seq_len)
        try:
            if tok.is_chat:
                ids = await self._chat_ids(tokenizer, tok, body, limit)
            else:
                prompt = tok.prompt_text(limit)
                ids = await asyncio.to_thread(tokenizer.encode, prompt, tok.special_tokens())
        except MaxError as e:
            raise ApiError(400, str(e), param="messages" if tok.is_chat else "prompt") from None
        out: dict[str, Any] = {"count": len(ids), "max_model_len": self.state.max_seq_len, "tokens": ids}
        if tok.wants_token_strs:
            out["token_strs"] = [tokenizer.token_text(t) for t in ids]
        return JSONResponse(out)

    async def _chat_ids(self, tokenizer: TextTokenizer, tok: TokenizeRequest, body: dict[str, Any], limit: int) -> list[int]:
        # The body as a chat completion request of this server's model: the same rules, the
        # same messages and tools for the template ("messages": null is an empty chat).
        messages = body["messages"] if tok.messages is not None else []
        chat = ChatCompletionRequest.from_json({**body, "model": self.state.served_model_name, "messages": messages})
        check_prompt_chars(chat.prompt_chars(), chat.prompt_param, limit)
        add_generation = tok.generation_prompt()
        messages, kwargs = template_inputs(tokenizer, chat)
        if chat.images:  # the images' tokens are counted, so they are loaded
            ids, _ = await encode_with_images(tokenizer, self.state.media, chat, messages, kwargs, add_generation)
            return ids
        text = await asyncio.to_thread(tokenizer.render_chat, messages, add_generation, kwargs)
        return await asyncio.to_thread(tokenizer.encode, text, False)

    async def detokenize(self, request: Request) -> Response:
        """The text of token ids."""
        body = await read_json(request, self.state.limits)
        detok = DetokenizeRequest.from_json(body)
        tokenizer = self._tokenizer_for(detok.model)
        ids = detok.token_ids(self.state.vocab_size)
        return JSONResponse({"prompt": await asyncio.to_thread(tokenizer.decode, ids, False)})
