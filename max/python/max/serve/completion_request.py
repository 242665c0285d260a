"""The body of POST /v1/completions, validated once, and what it gives the handler: its
prompts (text, or token ids), echo, logprobs and the engine's sampling parameters.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists;
each prompt gets `n` choices. `max_tokens` defaults to 16 (OpenAI's) and may be 0 only to
score the prompt (`echo` with `logprobs`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, PrivateAttr

from max.serve.api_errors import invalid
from max.serve.generation_request import GenerationRequest
from max.serve.json_kinds import boolean, check_text, integer, is_token_ids
from max.serve.request_body import AsSent

MAX_PROMPTS = 256
DEFAULT_MAX_TOKENS = 16
MAX_LOGPROBS = 20


def _prompts(value: Any) -> list[str | list[int]]:
    """`prompt` as a list of prompts, each text or token ids."""
    if isinstance(value, str):
        check_text(value, "prompt")
        return [value]
    if is_token_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        for p in value:
            check_text(p, "prompt")
        return list(value)
    if isinstance(value, list) and value and all(is_token_ids(p) for p in value):
        return list(value)
    raise invalid(
        "prompt",
        "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
    )


class CompletionRequest(GenerationRequest):
    """A (legacy) text completion request: prompts, and how to sample their continuations."""

    prompt_param: ClassVar[str] = "prompt"

    prompt: Annotated[str | list[str] | list[int] | list[list[int]], AsSent]
    echo: Annotated[bool | None, AsSent] = None
    logprobs: Annotated[int | None, AsSent] = None
    # vLLM's: each prompt token's logprob and this many alternatives, in `prompt_logprobs`.
    prompt_logprobs_asked: Annotated[int | None, AsSent] = Field(default=None, alias="prompt_logprobs")

    _prompts: list[str | list[int]] = PrivateAttr(default_factory=list)

    def _check(self) -> None:
        self._check_common()
        prompts = _prompts(self.prompt)
        if len(prompts) > MAX_PROMPTS:
            raise invalid("prompt", f"at most {MAX_PROMPTS} prompts per request")
        self._prompts = prompts
        self.echo = boolean(self.echo, "echo", False)
        self._check_max_tokens(low=0, default=DEFAULT_MAX_TOKENS)
        if self.max_tokens == 0 and not self.echo:
            raise invalid("max_tokens", "'max_tokens' may be 0 only with 'echo': true")
        self._check_sampling()
        self.logprobs = integer(self.logprobs, "logprobs", None, 0, MAX_LOGPROBS)
        self.prompt_logprobs_asked = integer(self.prompt_logprobs_asked, "prompt_logprobs", None, 0, MAX_LOGPROBS)
        self._check_constraint()

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: its text, or its token ids."""
        return self._prompts

    @property
    def logprob_alternatives(self) -> int | None:
        return self.logprobs

    @property
    def prompt_logprobs(self) -> int | None:
        """The prompt's tokens get logprobs with echo and logprobs, or when asked for."""
        echoed = self.logprobs if self.echo else None
        asked = [n for n in (echoed, self.prompt_logprobs_asked) if n is not None]
        return max(asked) if asked else None

    def prompt_chars(self) -> int:
        return sum(len(p) for p in self._prompts if isinstance(p, str))
