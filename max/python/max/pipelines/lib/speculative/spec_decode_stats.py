"""Counters of speculative decoding, under vLLM's meanings (`vllm:spec_decode_*`).

A *draft* is one request's proposal verified in one step; its tokens are draft tokens, and
the accepted ones are those the target agreed with, from the first on (the token the
target adds after them is not counted). `accepted_per_pos[i]` counts drafts whose token at
position i was accepted. Acceptance rate = accepted / draft tokens; mean accepted length =
1 + accepted / drafts (tokens emitted per verify step, the bonus token included).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodeStats:
    """Cumulative counts since the engine started; they add up across data-parallel replicas."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    def record(self, num_draft_tokens: int, num_accepted: int) -> None:
        """One draft of `num_draft_tokens` tokens, the first `num_accepted` accepted."""
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_pos) < num_draft_tokens:
            self.accepted_per_pos.extend([0] * (num_draft_tokens - len(self.accepted_per_pos)))
        for i in range(num_accepted):
            self.accepted_per_pos[i] += 1

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over proposed draft tokens (0 before any draft)."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify step: 1 + accepted drafts per draft (1 before any draft)."""
        return 1.0 + (self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0)

    def copy(self) -> SpecDecodeStats:
        """A snapshot that later steps do not change."""
        return SpecDecodeStats(self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens, list(self.accepted_per_pos))

    def to_json(self) -> dict:
        """The counts and the derived rates, for benchmark outputs."""
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "accepted_per_pos": list(self.accepted_per_pos),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
        }

    def __add__(self, other: SpecDecodeStats) -> SpecDecodeStats:
        width = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        mine = self.accepted_per_pos + [0] * (width - len(self.accepted_per_pos))
        theirs = other.accepted_per_pos + [0] * (width - len(other.accepted_per_pos))
        return SpecDecodeStats(
            self.num_drafts + other.num_drafts,
            self.num_draft_tokens + other.num_draft_tokens,
            self.num_accepted_tokens + other.num_accepted_tokens,
            [a + b for a, b in zip(mine, theirs)],
        )

    def __sub__(self, earlier: SpecDecodeStats) -> SpecDecodeStats:
        """What was counted since the snapshot `earlier` (e.g. a benchmark's warm-up)."""
        width = len(self.accepted_per_pos)
        before = earlier.accepted_per_pos + [0] * (width - len(earlier.accepted_per_pos))
        return SpecDecodeStats(
            self.num_drafts - earlier.num_drafts,
            self.num_draft_tokens - earlier.num_draft_tokens,
            self.num_accepted_tokens - earlier.num_accepted_tokens,
            [a - b for a, b in zip(self.accepted_per_pos, before)],
        )

    def __radd__(self, other: object) -> SpecDecodeStats:
        # `sum()` starts from 0 (the data-parallel pool sums every engine field).
        if other == 0:
            return self.copy()
        return NotImplemented
