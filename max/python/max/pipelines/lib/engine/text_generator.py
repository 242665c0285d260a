"""In-process text generation: a tokenizer in front of an `LLMEngine`.

This is what `generate` (and the logit tools) use; the server does the same work split
across two processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from max.pipelines.lib.engine.llm_engine import LLMEngine
from max.pipelines.lib.engine.request import TokenLogprob
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.tokens.text_stream import RequestTextStream
from max.pipelines.lib.tokens.tokenizer import TextTokenizer


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    num_prompt_tokens: int
    logprobs: list[TokenLogprob]


Prompt = str | Sequence[int]


class TextGenerator:
    """Generates text for prompts, many at once, through one engine."""

    def __init__(self, engine: LLMEngine, tokenizer: TextTokenizer, lora: str | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.lora = lora  # the LoRA adapter every request runs (None: the base model)
        self._ids = itertools.count()

    def prompt_ids(self, prompt: Prompt, chat: bool = False) -> list[int]:
        """Token ids of a prompt: text (through the chat template if `chat`) or ids."""
        if not isinstance(prompt, str):
            return list(prompt)
        if chat:
            return self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def _add(self, prompt: Prompt, params: SamplingParams, chat: bool) -> tuple[str, RequestTextStream]:
        ids = self.prompt_ids(prompt, chat)
        request_id = f"gen-{next(self._ids)}"
        self.engine.add_request(request_id, ids, params, lora=self.lora)
        return request_id, RequestTextStream(self.tokenizer, ids, params)

    def stream(self, prompt: Prompt, params: SamplingParams, chat: bool = False) -> Iterator[str]:
        """Yields the text of one request as it is generated."""
        request_id, stream = self._add(prompt, params, chat)
        try:
            while not stream.finished:
                for output in self.engine.step():
                    if output.request_id == request_id:
                        delta = stream.update(output)
                        if delta.text:
                            yield delta.text
        finally:
            # Stopped early (a stop string, or the consumer quit): free its pages now.
            # For a request the engine already finished this does nothing.
            self.engine.abort(request_id)

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams], chat: bool = False
    ) -> list[Completion]:
        """Runs all prompts together (continuous batching) and returns their completions."""
        per_prompt = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        streams: dict[str, RequestTextStream] = {}
        logprobs: dict[str, list[TokenLogprob]] = {}
        order = []
        for prompt, p in zip(prompts, per_prompt):
            request_id, stream = self._add(prompt, p, chat)
            streams[request_id] = stream
            logprobs[request_id] = []
            order.append(request_id)
        pending = set(order)
        while pending:
            for output in self.engine.step():
                stream = streams[output.request_id]
                delta = stream.update(output)
                if delta.logprobs:
                    logprobs[output.request_id].extend(delta.logprobs)
                if stream.finished and output.request_id in pending:
                    pending.discard(output.request_id)
                    if delta.stopped_by_string:
                        self.engine.abort(output.request_id)
        return [
            Completion(
                streams[r].text,
                streams[r].token_ids,
                streams[r].finish_reason,
                len(streams[r].prompt_ids),
                logprobs[r],
            )
            for r in order
        ]
