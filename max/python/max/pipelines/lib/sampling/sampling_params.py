"""Per-request generation settings and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field

from max.errors import MaxError
from max.pipelines.lib.pooling.pooling_params import PoolingParams
from max.pipelines.lib.sampling.structured_output import StructuredOutput


@dataclass
class SamplingParams:
    """How one request is decoded.

    temperature 0 means greedy. top_k <= 0, top_p == 1 and min_p == 0 disable those
    filters. `seed` makes sampling reproducible for this request whatever else is batched
    with it. Penalties: repetition (Hugging Face's, over prompt and output), frequency and
    presence (OpenAI's, over the output). `stop` strings are matched on the text; `stop_token_ids`
    and EOS (unless `ignore_eos`) end generation at the token. `logprobs` asks for the
    sampled token's log-probability plus that many top alternatives; `prompt_logprobs`
    the same for each prompt token. `structured_output` limits the output to a grammar's
    language (a JSON schema, a regex, choices; see structured_output.py). `logit_bias` adds
    its value to a token's logit before any filter (-100 all but bans it, 100 forces it).
    """

    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured_output: StructuredOutput | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's, -100..100)
    priority: int = 0  # --scheduling-policy priority: lower is admitted first (vLLM's order)
    # An embedding request (vLLM's PoolingParams): the prompt is pooled, nothing is sampled.
    pooling: PoolingParams | None = None

    @property
    def greedy(self) -> bool:
        """Decoding takes the argmax."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        """Any penalty changes the logits."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    def validate(self, vocab_size: int | None = None) -> None:
        """Raises MaxError naming the first out-of-range setting."""

        def bad(name: str, rule: str) -> MaxError:
            return MaxError(f"{name} must be {rule} (got {getattr(self, name)!r})")

        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise bad("max_new_tokens", ">= 0")
        if not 0.0 <= self.temperature <= 100.0:
            raise bad("temperature", "between 0 and 100")
        if self.top_k < 0 and self.top_k != -1:
            raise bad("top_k", ">= 0 (0 or -1 disable it)")
        if self.top_k > 2**31 - 1:  # the sampler reads it as int32
            raise bad("top_k", "at most 2**31 - 1")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "in (0, 1]")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "in [0, 1]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", "in (0, 10]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", "in [-2, 2]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", "in [-2, 2]")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise bad("seed", "a 64-bit integer")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 20:
                raise bad(name, "between 0 and 20")
        if self.pooling is not None:
            self.pooling.validate()
        for t, bias in (self.logit_bias or {}).items():
            if not -100.0 <= bias <= 100.0:
                raise MaxError(f"logit_bias of token {t} must be between -100 and 100 (got {bias!r})")
        if vocab_size is not None:
            for t in self.stop_token_ids:
                if not 0 <= t < vocab_size:
                    raise MaxError(f"stop token id {t} is outside the vocabulary (size {vocab_size})")
            for t in self.logit_bias or {}:
                if not 0 <= t < vocab_size:
                    raise MaxError(f"logit_bias names token id {t}, outside the vocabulary (size {vocab_size})")
