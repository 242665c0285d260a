"""POST /v1/completions: prompts (text or token ids) in, their continuations out.

Each prompt is tokenized as it is (no template), or taken as token ids, which must be in
the vocabulary and (for a vision-language model) hold no image token. With `echo` the
answer repeats the prompt before its continuation and, with `logprobs`, scores the prompt's
tokens too (the first has none). Without a tokenizer (`--skip-tokenizer-init`) only
token-id prompts are served, and each choice carries its generated ids in `token_ids`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from max.errors import MaxError
from max.pipelines.lib import TextDelta, TokenLogprob
from max.serve import response_rendering as render
from max.serve.api_errors import ApiError, invalid
from max.serve.completion_request import CompletionRequest
from max.serve.generation_choice import Choice
from max.serve.generation_handler import EncodedPrompts, GenerationHandler

_NO_TOKENIZER = "this server runs without a tokenizer (--skip-tokenizer-init)"


class CompletionHandler(GenerationHandler):
    """Serves /v1/completions (see the module docstring)."""

    request_model = CompletionRequest
    id_prefix = "cmpl"
    completion_kind = render.TEXT_COMPLETION
    chunk_kind = render.TEXT_COMPLETION

    # -- the prompt ------------------------------------------------------------------------
    def _check_tokenizer_free(self, gen: CompletionRequest) -> None:
        if any(isinstance(p, str) for p in gen.prompts):
            raise ApiError(
                400,
                f"{_NO_TOKENIZER}: 'prompt' must be token ids (a list of integers, or a list of such lists)",
                param="prompt",
                code="tokenizer_required",
            )
        if gen.stop:
            raise ApiError(400, f"{_NO_TOKENIZER}: 'stop' strings need one; use 'stop_token_ids'", param="stop", code="tokenizer_required")

    async def _encode(self, gen: CompletionRequest) -> EncodedPrompts:
        tokenizer = self.state.tokenizer
        vocab_size = self.state.vocab_size
        out = []
        for prompt in gen.prompts:
            if isinstance(prompt, str):
                out.append(await asyncio.to_thread(tokenizer.encode, prompt))
            else:
                bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
                if bad is not None:
                    raise invalid("prompt", f"token id {bad} is outside the vocabulary (size {vocab_size})")
                out.append(list(prompt))
        if tokenizer is not None and tokenizer.takes_images:
            _refuse_image_tokens(out, tokenizer.image_token_id)
        return EncodedPrompts(out)

    # -- the answer ------------------------------------------------------------------------
    def _render_choice(self, gen: CompletionRequest, choice: Choice) -> dict[str, Any]:
        tokenizer = self.state.tokenizer
        text, logprobs = choice.stream.text, None
        if gen.echo and tokenizer is not None:
            text = tokenizer.decode(choice.prompt_ids) + text
        if gen.logprobs is not None:
            ids = choice.stream.token_ids[: len(choice.logprobs)]
            entries: list[TokenLogprob | None] = list(choice.logprobs)
            if gen.echo:
                prompt_entries = choice.stream.prompt_logprobs or [None] * len(choice.prompt_ids)
                ids = choice.prompt_ids + ids
                entries = list(prompt_entries) + entries
            logprobs = render.completion_logprobs(tokenizer, entries, ids)
        return {
            "index": choice.index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": choice.stream.finish_reason,
            **self._ids_fields(gen, choice),
            **self._prompt_logprobs_field(gen, choice),
        }

    def _prompt_logprobs_field(self, gen: CompletionRequest, choice: Choice) -> dict[str, Any]:
        """vLLM's `prompt_logprobs`, when asked for (see render.prompt_logprobs)."""
        if gen.prompt_logprobs_asked is None:
            return {}
        entries = choice.stream.prompt_logprobs or [None] * len(choice.prompt_ids)
        return {"prompt_logprobs": render.prompt_logprobs(self.state.tokenizer, entries, gen.prompt_logprobs_asked)}

    def _stream_opening(self, gen: CompletionRequest, choices: list[Choice]) -> list[dict[str, Any]]:
        """With echo, each choice's prompt comes first."""
        tokenizer = self.state.tokenizer
        if not gen.echo or tokenizer is None:
            return []
        return [
            {"index": c.index, "text": tokenizer.decode(c.prompt_ids), "logprobs": None, "finish_reason": None}
            for c in choices
        ]

    def _stream_item(self, gen: CompletionRequest, choice: Choice, delta: TextDelta, finish: str | None) -> dict[str, Any]:
        logprobs = None
        if gen.logprobs is not None and delta.logprobs:
            entries = list(delta.logprobs)
            logprobs = render.completion_logprobs(self.state.tokenizer, entries, [e.token_id for e in entries])
        item = {"index": choice.index, "text": delta.text, "logprobs": logprobs, "finish_reason": finish}
        if finish is not None:  # the prompt's logprobs come with the choice's last chunk
            item.update(self._prompt_logprobs_field(gen, choice))
        return item


def _refuse_image_tokens(prompts: list[list[int]], image_token_id: int) -> None:
    """A completion prompt may not hold a vision model's image token: no image would fill it."""
    if any(image_token_id in ids for ids in prompts):
        raise MaxError(
            f"the prompt holds the image token (id {image_token_id}); send images as image_url parts "
            "of a chat message instead"
        )
