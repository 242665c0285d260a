"""What the engine asks of a draft: a few tokens that may continue each sequence.

Every speculative method (n-gram prompt lookup, a draft model, EAGLE heads, the test-only
oracle) is a `DraftProposer`. The engine hands it the sequences that speculate this step,
each as the tokens known so far (prompt plus every accepted output token, no placeholders),
and verifies what it proposes with one forward pass of the target. A proposer that keeps
state per request (a draft model's KV cache) finds what it computed before by comparing
token ids, so a rollback after rejected drafts needs no separate call; `release` frees that
state when the request leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DraftSequence:
    """One speculating request: its id and every token known so far."""

    request_id: str
    token_ids: Sequence[int]


class DraftProposer(Protocol):
    """Proposes up to `num_tokens` draft tokens per sequence (fewer, or none, is allowed)."""

    def propose(self, sequences: Sequence[DraftSequence], num_tokens: int) -> list[list[int]]:
        """Draft tokens for each sequence, in order."""
        ...

    def release(self, request_id: str) -> None:
        """Forgets what was kept for a request that finished or was preempted."""
        ...
