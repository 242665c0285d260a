"""What both generation endpoints take: the sampling fields, streaming, n, the output
constraint, and their conversion into the engine's `SamplingParams`.

`ChatCompletionRequest` (chat_request.py) and `CompletionRequest` (completion_request.py)
add their prompt's fields and apply these rules, each in its own order.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import PrivateAttr

from max.pipelines.lib import SamplingParams
from max.pipelines.lib.sampling.structured_output import StructuredOutput
from max.serve.api_errors import invalid
from max.serve.json_kinds import boolean, check_text, integer, number, of_kind
from max.serve.output_constraints import ResponseFormat, StructuredOutputs, output_constraint
from max.serve.request_body import AsSent, RequestBody

MAX_TOP_K = 2**31 - 1  # the sampler reads top_k as int32
MAX_STOP_STRINGS = 16
MAX_CHOICES = 16  # `n`
MAX_LOGIT_BIAS = 1024  # tokens one request may bias


def _logit_bias(value: Any) -> dict[int, float]:
    """`logit_bias` ({"token id": bias from -100 to 100}) with integer keys; 400 otherwise."""
    if value is None:
        return {}
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid("logit_bias", f"'logit_bias' may name at most {MAX_LOGIT_BIAS} tokens")
    out = {}
    for key, bias in value.items():
        if not key.isdigit():
            raise invalid("logit_bias", f"'logit_bias' keys are token ids (digits), got {key!r}")
        out[int(key)] = number(bias, f"logit_bias.{key}", 0.0, -100.0, 100.0)
    return out


class StreamOptions(RequestBody):
    """`stream_options`: whether the last event of a stream carries the usage."""

    include_usage: Annotated[bool | None, AsSent] = None


class GenerationRequest(RequestBody):
    """The fields and rules both generation endpoints share (see the module docstring).

    After validation every field holds its checked value: `n`, `stream`, the sampling
    numbers and `stop` (a list) have their defaults filled in.
    """

    # The field a prompt's errors name (its length, its tokens).
    prompt_param: ClassVar[str]

    model: str
    max_tokens: Annotated[int | None, AsSent] = None
    max_completion_tokens: Annotated[int | None, AsSent] = None
    n: Annotated[int | None, AsSent] = None
    stream: Annotated[bool | None, AsSent] = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float | None, AsSent] = None
    top_p: Annotated[float | None, AsSent] = None
    top_k: Annotated[int | None, AsSent] = None
    min_p: Annotated[float | None, AsSent] = None
    seed: Annotated[int | None, AsSent] = None
    repetition_penalty: Annotated[float | None, AsSent] = None
    frequency_penalty: Annotated[float | None, AsSent] = None
    presence_penalty: Annotated[float | None, AsSent] = None
    stop: str | list[str] | None = None
    stop_token_ids: Annotated[list[int] | None, AsSent] = None
    ignore_eos: Annotated[bool | None, AsSent] = None
    return_token_ids: Annotated[bool | None, AsSent] = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    logit_bias: Annotated[dict[str, Any] | None, AsSent] = None
    priority: Annotated[int | None, AsSent] = None

    _include_usage: bool = PrivateAttr(default=False)
    _constraint: tuple[str, StructuredOutput] | None = PrivateAttr(default=None)

    # -- what the handlers read ------------------------------------------------------------
    @property
    def include_usage(self) -> bool:
        """A stream ends with an event that carries the usage."""
        return self._include_usage

    @property
    def output_constraint(self) -> tuple[str, StructuredOutput] | None:
        """The grammar the output must follow and the field that asked for it (None: free)."""
        return self._constraint

    @property
    def logprob_alternatives(self) -> int | None:
        """Alternatives per token to report with its logprob; None: no logprobs."""
        raise NotImplementedError

    @property
    def prompt_logprobs(self) -> int | None:
        """Alternatives per prompt token (completions' echo); None: none."""
        return None

    def prompt_chars(self) -> int:
        """Characters of the prompt's text, checked against the server's limit before
        tokenizing (token-id prompts and images count nothing here)."""
        raise NotImplementedError

    def to_sampling_params(
        self, max_new_tokens: int | None = None, choice: int = 0, structured_output: StructuredOutput | None = None
    ) -> SamplingParams:
        """How the engine decodes choice number `choice` of this request.

        Each choice's seed is the request's plus its index: the n choices differ, and the
        same request gives the same n answers. `structured_output` replaces the request's
        own constraint (the chat handler's grammar for forced tool calls).
        """
        if structured_output is None and self._constraint is not None:
            structured_output = self._constraint[1]
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            seed=None if self.seed is None else self.seed + choice,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            stop=list(self.stop),
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            logprobs=self.logprob_alternatives,
            prompt_logprobs=self.prompt_logprobs,
            structured_output=structured_output,
            logit_bias=self.logit_bias or None,
            priority=self.priority,
        )

    # -- the rules, applied by the endpoints' `_check` in their order ----------------------
    def _check_common(self) -> None:
        """Streaming, `n` and `return_token_ids`."""
        self.stream = boolean(self.stream, "stream", False)
        options = self.stream_options
        include_usage = options.include_usage if options is not None and options.sent("include_usage") else False
        if not isinstance(include_usage, bool):
            raise invalid("stream_options", "'stream_options.include_usage' must be a boolean")
        self._include_usage = include_usage
        self.n = integer(self.n, "n", 1, 1, MAX_CHOICES)
        self.return_token_ids = boolean(self.return_token_ids, "return_token_ids", False)

    def _check_max_tokens(self, low: int, default: int | None) -> None:
        """`max_completion_tokens` (the newer name) or else `max_tokens`, at least `low`;
        afterwards `max_tokens` holds the one that counts (None: up to the context length)."""
        max_tokens = integer(self.max_completion_tokens, "max_completion_tokens", None, low)
        if max_tokens is None:
            max_tokens = integer(self.max_tokens, "max_tokens", default, low)
        self.max_tokens = max_tokens

    def _check_sampling(self) -> None:
        """Stop strings and ids, seed and the sampling numbers."""
        stop = of_kind(self.stop, "stop", (str, list), [])
        if isinstance(stop, str):
            stop = [stop]
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise invalid("stop", "'stop' must be a non-empty string or a list of up to 16 such strings")
        for s in stop:
            check_text(s, "stop")
        stop_ids = of_kind(self.stop_token_ids, "stop_token_ids", (list,), [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
            raise invalid("stop_token_ids", "'stop_token_ids' must be a list of integers")
        self.stop, self.stop_token_ids = list(stop), list(stop_ids)
        self.seed = integer(self.seed, "seed", None, -(2**63), 2**64 - 1)
        top_k = integer(self.top_k, "top_k", 0, -1, MAX_TOP_K)
        self.top_k = 0 if top_k == -1 else top_k
        self.temperature = number(self.temperature, "temperature", 1.0, 0.0, 2.0)
        self.top_p = number(self.top_p, "top_p", 1.0, 1e-9, 1.0)
        self.min_p = number(self.min_p, "min_p", 0.0, 0.0, 1.0)
        self.repetition_penalty = number(self.repetition_penalty, "repetition_penalty", 1.0, 1e-6, 10.0)
        self.frequency_penalty = number(self.frequency_penalty, "frequency_penalty", 0.0, -2.0, 2.0)
        self.presence_penalty = number(self.presence_penalty, "presence_penalty", 0.0, -2.0, 2.0)
        self.ignore_eos = boolean(self.ignore_eos, "ignore_eos", False)
        self.logit_bias = _logit_bias(self.logit_bias)
        self.priority = integer(self.priority, "priority", 0, -(2**31), 2**31 - 1)

    def _check_constraint(self) -> None:
        """At most one output constraint, well formed."""
        guided = {"json": self.guided_json, "regex": self.guided_regex, "choice": self.guided_choice, "grammar": self.guided_grammar}
        self._constraint = output_constraint(self.response_format, self.structured_outputs, guided)
