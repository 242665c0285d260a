"""A test and benchmark proposer that knows the target's greedy continuation.

Not a method users can choose: given each request's reference sequence (prompt plus the
target's own greedy output, from a run without speculation), it proposes the next tokens
of that reference while the request still follows it. Greedy verification then accepts
every draft, which measures the machinery's ceiling: what any drafter (EAGLE heads, a
draft model) reaching that acceptance would give. `corrupt_every=m` makes every m-th
reference position wrong (token + 1), so rejections, rollbacks and the bonus token are
exercised too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from max.pipelines.lib.speculative.proposer import DraftSequence


class OracleProposer:
    """A `DraftProposer` reading drafts from known reference sequences, by request id."""

    def __init__(self, references: Mapping[str, Sequence[int]], vocab_size: int, corrupt_every: int = 0) -> None:
        self.references = {rid: list(ref) for rid, ref in references.items()}
        self.vocab_size = vocab_size
        self.corrupt_every = corrupt_every
        self.calls = 0

    def propose(self, sequences: Sequence[DraftSequence], num_tokens: int) -> list[list[int]]:
        """The reference's next `num_tokens` tokens for each sequence that follows its
        reference so far (nothing for the others)."""
        self.calls += 1
        out = []
        for seq in sequences:
            ref = self.references.get(seq.request_id)
            n = len(seq.token_ids)
            if ref is None or list(seq.token_ids) != ref[:n]:
                out.append([])
                continue
            drafts = ref[n : n + num_tokens]
            if self.corrupt_every > 0:
                m = self.corrupt_every
                drafts = [(t + 1) % self.vocab_size if (n + i) % m == 0 else t for i, t in enumerate(drafts)]
            out.append(drafts)
        return out

    def release(self, request_id: str) -> None:
        """Nothing is kept per request."""
