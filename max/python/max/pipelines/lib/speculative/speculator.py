"""The engine's side of speculative decoding: who speculates this step, with which drafts.

Before each step the engine asks `Speculator.drafts` for the running requests' drafts. A
request speculates when it is decoding (one uncomputed token, every token known on the
host), its output has room for the drafts and the token after them, and nothing about it
depends on the exact token history in a way a verify step would get wrong:
- penalties change each position's logits by the tokens before it (drafts included);
- a multimodal prompt's rotary positions are computed per step by the model.
A request with a grammar (structured outputs) does speculate: its masks at the verified
positions come from its matcher advanced through the drafts and rolled back
(`draft_masks`).
Speculation is off for the whole step once `disable_by_batch_size` requests are running.
After the step, `record` counts what was accepted (`SpecDecodeStats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from max.errors import MaxError
from max.pipelines.lib.speculative.ngram_proposer import NgramProposer
from max.pipelines.lib.speculative.proposer import DraftProposer, DraftSequence
from max.pipelines.lib.speculative.spec_decode_stats import SpecDecodeStats
from max.pipelines.lib.speculative.speculative_config import SpeculativeConfig, check_implemented

if TYPE_CHECKING:
    from max.pipelines.lib.engine.request import Request
    from max.pipelines.lib.runner.input_batch import ModelInputs


def build_proposer(config: SpeculativeConfig) -> DraftProposer:
    """The proposer of `config`'s method when it needs no model (n-gram); a usage error
    for the others, whose proposer is built beside the target (`build_engine`)."""
    check_implemented(config)
    if config.method != "ngram":
        raise MaxError(
            f"--speculative-config: method {config.method} needs its proposer built with the target "
            "(build_engine builds it)"
        )
    return NgramProposer(config.prompt_lookup_min or 1, config.prompt_lookup_max or 1)


def can_speculate(request: Request) -> bool:
    """Whether a running request may verify drafts this step (see the module docstring)."""
    params = request.params
    return (
        request.num_uncomputed == 1
        and request.num_output_tokens > 0
        and not request.pending
        and not params.has_penalties
        and not request.images
    )


class Speculator:
    """Asks the proposer for drafts each step and counts how many were accepted."""

    def __init__(self, config: SpeculativeConfig, proposer: DraftProposer | None = None) -> None:
        self.config = config
        self.proposer = proposer if proposer is not None else build_proposer(config)
        self.num_tokens = config.num_speculative_tokens
        self.stats = SpecDecodeStats()
        # A proposer that reads the target's own features (EAGLE) sees every target step.
        self._observe_step = getattr(self.proposer, "observe_step", None)

    def active(self, num_running: int) -> bool:
        """Whether a step with `num_running` running requests speculates at all."""
        return self.config.speculates_at(num_running)

    def drafts(self, running: Sequence[Request]) -> dict[str, list[int]]:
        """Draft tokens by request id, for the running requests that speculate this step
        (none when the batch is too large)."""
        if not running or not self.active(len(running)):
            return {}
        chosen = [r for r in running if can_speculate(r) and self._room(r) > 0]
        if not chosen:
            return {}
        proposals = self.proposer.propose([DraftSequence(r.request_id, r.tokens) for r in chosen], self.num_tokens)
        out = {}
        for request, drafts in zip(chosen, proposals):
            drafts = list(drafts[: self._room(request)])
            if drafts:
                out[request.request_id] = drafts
        return out

    def observe(self, inputs: ModelInputs) -> None:
        """After the target ran the step of `inputs`: the proposer takes what it needs of it
        (EAGLE: the step's features), whether or not the step speculated."""
        if self._observe_step is not None:
            self._observe_step(inputs)

    def _room(self, request: Request) -> int:
        """Drafts the request can take: the verify step emits up to one more token than it
        drafts, and the request may not pass its length limit."""
        return min(self.num_tokens, request.max_total_tokens - len(request.tokens) - 1)

    def record(self, num_draft_tokens: int, num_accepted: int) -> None:
        """Counts one verified draft."""
        self.stats.record(num_draft_tokens, num_accepted)

    def release(self, request_id: str) -> None:
        """The request left the engine: its proposer state goes."""
        self.proposer.release(request_id)
