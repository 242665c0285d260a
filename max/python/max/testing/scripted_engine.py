"""An in-process engine stand-in that writes a scripted answer, for tests of how the HTTP
layer reads a model's text (reasoning, tool calls, the Anthropic and Responses APIs).

A tiny random model never writes `<think>...</think>` or a well-formed tool call; this
engine answers every request with the token ids of the text the test sets (`say`), a few
tokens per output so that tags and JSON are cut across stream events, and records each
request's prompt and sampling parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from max.pipelines.lib import RequestOutput, SamplingParams
from max.pipelines.lib.model.multimodal import ImageInput
from max.testing.fake_engine import FakeEngine


class ScriptedEngine(FakeEngine):
    """Answers with the ids set by `say` (finish `stop`), or fewer (`length`) when
    max_new_tokens runs out; `tokens_per_output` ids per output."""

    def __init__(self, tokens_per_output: int = 2, num_cached_tokens: int = 0) -> None:
        super().__init__()
        self.script: list[int] = []
        self.tokens_per_output = tokens_per_output
        self.num_cached_tokens = num_cached_tokens
        self.params: dict[str, SamplingParams] = {}  # each request's sampling parameters

    def say(self, token_ids: Sequence[int]) -> None:
        """The answer of the next requests."""
        self.script = list(token_ids)

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        images: Sequence[ImageInput] = (),
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields the script, `tokens_per_output` ids at a time."""
        self.received[request_id] = (list(prompt_ids), tuple(images))
        self.params[request_id] = params
        limit = params.max_new_tokens if params.max_new_tokens is not None else len(self.script)
        ids = self.script[:limit]
        reason = "stop" if len(ids) == len(self.script) else "length"
        step = self.tokens_per_output
        cached = min(self.num_cached_tokens, len(prompt_ids))
        if not ids:
            yield RequestOutput(request_id, [], True, reason, num_prompt_tokens=len(prompt_ids), num_cached_tokens=cached)
            return
        for start in range(0, len(ids), step):
            await asyncio.sleep(0)
            done = start + step >= len(ids)
            yield RequestOutput(
                request_id, ids[start : start + step], done, reason if done else None,
                num_prompt_tokens=len(prompt_ids), num_cached_tokens=cached,
            )  # fmt: skip
