"""Following one request's output as text: detokenization, stop strings, finish reason.

Used in-process by `TextGenerator` and in the HTTP process by the server, which both get
`RequestOutput`s from an engine and must turn them into text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from max.pipelines.lib.engine.request import RequestOutput, TokenLogprob
from max.pipelines.lib.sampling.sampling_params import SamplingParams
from max.pipelines.lib.tokens.detokenizer import IncrementalDetokenizer, StopStringMatcher
from max.pipelines.lib.tokens.tokenizer import TextTokenizer


@dataclass
class TextDelta:
    """What one engine output adds to the request's text."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None
    stopped_by_string: bool = False
    reasoning_text: str = ""  # a reasoning model's thinking, apart from `text` (harmony)
    tool_calls: list = field(default_factory=list)  # calls this delta completes (ToolCall)

    def followed_by(self, later: TextDelta) -> TextDelta:
        """This delta and the `later` one of the same request, as one (for a handler that
        sends what waited for it in one chunk)."""
        logprobs = self.logprobs
        if later.logprobs is not None:
            logprobs = [*(logprobs or []), *later.logprobs]
        return TextDelta(
            self.text + later.text,
            [*self.token_ids, *later.token_ids],
            logprobs,
            later.finished,
            later.finish_reason,
            later.stopped_by_string,
            self.reasoning_text + later.reasoning_text,
            [*self.tool_calls, *later.tool_calls],
        )


@dataclass
class RequestTextStream:
    """Accumulates a request's tokens and text as its outputs arrive.

    Without a tokenizer (`--skip-tokenizer-init`) only the token ids accumulate; the text
    stays empty and stop strings cannot apply.
    """

    tokenizer: TextTokenizer | None
    prompt_ids: Sequence[int]
    params: SamplingParams
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    prompt_logprobs: list | None = None

    def __post_init__(self) -> None:
        self._detok = None
        if self.tokenizer is not None:
            self._detok = IncrementalDetokenizer(self.tokenizer, self.prompt_ids)
        self._stops = StopStringMatcher(self.params.stop)

    def update(self, output: RequestOutput) -> TextDelta:
        """Adds one engine output; returns the text to emit. Finishes on a stop string."""
        if self.params.stop and len(output.new_token_ids) > 1 and not self.finished:
            return self._update_each(output)
        return self._update_one(output)

    def _update_each(self, output: RequestOutput) -> TextDelta:
        """An output of several tokens (speculative decoding), fed one token at a time: a stop
        string ends the request at the token it ends in, as with one token per step, and the
        tokens after it are dropped."""
        delta = None
        last = len(output.new_token_ids) - 1
        for i, token in enumerate(output.new_token_ids):
            part = dataclasses.replace(
                output,
                new_token_ids=[token],
                logprobs=output.logprobs[i : i + 1] if output.logprobs else output.logprobs,
                finished=output.finished and i == last,
                finish_reason=output.finish_reason if i == last else None,
                prompt_logprobs=output.prompt_logprobs if i == 0 else None,
            )
            step = self._update_one(part)
            delta = step if delta is None else delta.followed_by(step)
            if self.finished:
                break
        return delta

    def _update_one(self, output: RequestOutput) -> TextDelta:
        if self.finished:
            return TextDelta("", [], None, True, self.finish_reason)
        self.num_cached_tokens = output.num_cached_tokens
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        self.token_ids.extend(output.new_token_ids)
        raw = ""
        if self._detok is not None:
            raw = self._detok.add(output.new_token_ids) if output.new_token_ids else ""
            if output.finished:
                raw += self._detok.flush()
        emit, stopped = self._stops.feed(raw, final=output.finished)
        self.text += emit
        if stopped:
            self.finished, self.finish_reason = True, "stop"
        elif output.finished:
            self.finished, self.finish_reason = True, output.finish_reason
        return TextDelta(emit, list(output.new_token_ids), output.logprobs, self.finished, self.finish_reason, stopped)
