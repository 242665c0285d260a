"""A generation request as the engine tracks it, and what the engine reports back."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from max.pipelines.lib.lora.prefix_keys import AdapterKeyedTokens
from max.pipelines.lib.model.multimodal import ImageInput, ImageKeyedTokens
from max.pipelines.lib.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:
    from max.pipelines.lib.lora.registry import LoRARef
    from max.pipelines.lib.pooling.request_pooling import RequestPooling


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # a request is its own identity (and lists of them are searched)
class Request:
    """Engine-side state of one request.

    `tokens` holds the prompt followed by every generated token; `num_computed` counts the
    leading tokens whose keys and values are in the KV cache. A request in decode has
    exactly one uncomputed token: the last one it generated.
    """

    request_id: str
    tokens: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    seed: int
    max_total_tokens: int  # prompt + output may not exceed this (model max length)
    arrival: int
    status: RequestStatus = RequestStatus.WAITING
    num_computed: int = 0
    num_cached_prompt_tokens: int = 0
    finish_reason: str | None = None
    prompt_logprobs: list = field(default_factory=list)
    # Asynchronous scheduling: placeholders (-1) in `tokens` for tokens drawn by launched
    # steps and not read yet, as (step id, row of the step's sampler output, index in tokens).
    pending: list[tuple[int, int, int]] = field(default_factory=list)
    # Structured outputs: the llguidance matcher of the request's grammar (None: free text).
    matcher: Any = None
    # The prompt's images, in prompt order (see `multimodal.ImageInput`).
    images: tuple[ImageInput, ...] = ()
    # What the model's encoders made of the prompt's inputs (a vision encoder's embeddings,
    # by image index) while its prefill needs them; dropped with the request at the latest.
    encoder_cache: dict[int, Any] = field(default_factory=dict)
    # The LoRA adapter the request runs (a `lora.LoRARef`; None: the base model), and the
    # device slot the engine gave it for the current step.
    lora: LoRARef | None = None
    lora_slot: int = -1
    # An embedding request: its prompt's final hidden states are pooled, nothing is sampled.
    pooling: RequestPooling | None = None

    @property
    def output_tokens(self) -> list[int]:
        """Generated tokens so far."""
        return self.tokens[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """How many tokens were generated."""
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def prefix_key_tokens(self) -> Sequence[int]:
        """The tokens that name this request's pages in the prefix cache (an image's
        placeholder tokens stand for the image's content)."""
        tokens = ImageKeyedTokens(self.tokens, self.images) if self.images else self.tokens
        # Pages computed under an adapter hold its keys and values: keyed apart (`prefix_keys`).
        return tokens if self.lora is None else AdapterKeyedTokens(tokens, self.lora.uid)

    @property
    def num_uncomputed(self) -> int:
        """Tokens whose keys and values still have to be computed."""
        return len(self.tokens) - self.num_computed

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Logits of every prompt position are needed (no prefix-cache reuse then)."""
        return self.params.prompt_logprobs is not None

    @property
    def skips_prefix_cache(self) -> bool:
        """Every prompt position must be computed (prompt logprobs; mean or CLS pooling),
        so no cached page is reused."""
        return self.wants_prompt_logprobs or (self.pooling is not None and self.pooling.reads_every_position)


@dataclass
class TokenLogprob:
    """Log-probability of a token and, if asked, the top alternatives at its position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RequestOutput:
    """What one step produced for one request (picklable: it crosses processes)."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    error: str | None = None
    # The error is the server's (a failed step), not a refusal of the request.
    server_error: bool = False
    # An embedding request's pooled vector (in its last output).
    embedding: list[float] | None = None
