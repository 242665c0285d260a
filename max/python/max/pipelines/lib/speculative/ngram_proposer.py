"""N-gram prompt lookup: drafts copied from earlier in the sequence itself, no extra model.

For each sequence, the longest suffix of n tokens (prompt_lookup_max >= n >=
prompt_lookup_min) that also occurs earlier is found, and the tokens that followed that
earlier occurrence are proposed (vLLM's ngram proposer; Saxena's prompt lookup decoding).
Among equally long matches the latest one wins: when an answer copies a passage, the most
recent occurrence is the copy being made. Outputs that quote or edit their prompt (code
edits, extraction, summaries with quotes) continue such copies for many tokens, which is
where this pays off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from max.pipelines.lib.speculative.proposer import DraftSequence


def longest_ngram_continuation(tokens: Sequence[int], min_n: int, max_n: int, num_tokens: int) -> list[int]:
    """Up to `num_tokens` tokens that followed the latest earlier occurrence of the longest
    suffix n-gram of `tokens` (min_n <= n <= max_n); empty when no such n-gram recurs."""
    length = len(tokens)
    if num_tokens <= 0 or length < min_n + 1:
        return []
    array = np.asarray(tokens, dtype=np.int64)
    # Candidate ends: earlier positions holding the last token (the suffix's end itself excluded).
    ends = np.flatnonzero(array[: length - 1] == array[-1])
    if ends.size == 0:
        return []
    # How far back each candidate agrees with the suffix, up to max_n tokens.
    matched = np.ones(ends.size, dtype=np.int64)
    alive = np.ones(ends.size, dtype=bool)
    for back in range(1, min(max_n, length)):
        src = ends - back
        ok = alive & (src >= 0)
        ok[ok] = array[src[ok]] == array[length - 1 - back]
        alive = ok
        if not alive.any():
            break
        matched += alive
    best = int(matched.max())
    if best < min_n:
        return []
    end = int(ends[np.flatnonzero(matched == best)[-1]])  # the latest of the longest
    return array[end + 1 : end + 1 + num_tokens].tolist()


class NgramProposer:
    """A `DraftProposer` by prompt lookup (see the module docstring); keeps no state."""

    def __init__(self, prompt_lookup_min: int, prompt_lookup_max: int) -> None:
        if not 1 <= prompt_lookup_min <= prompt_lookup_max:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max (got {prompt_lookup_min}, {prompt_lookup_max})")
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, sequences: Sequence[DraftSequence], num_tokens: int) -> list[list[int]]:
        """Draft tokens for each sequence, in order (empty where nothing recurs)."""
        return [longest_ngram_continuation(s.token_ids, self.min_n, self.max_n, num_tokens) for s in sequences]

    def release(self, request_id: str) -> None:
        """Nothing is kept per request."""
