"""Structured outputs with speculation: the grammar's token mask at every verified position.

A constrained request verifying drafts d_0..d_{k-1} needs, at position i, the mask of its
grammar after d_0..d_{i-1}: the matcher consumes the drafts one by one, a mask is taken
before each, and the matcher is rolled back to where it was. The draws are then exactly
those of a run without speculation (whose matcher would have consumed the same tokens
before those positions), and the output processor advances the matcher by the tokens
actually emitted. A draft the grammar does not allow is never consumed: its position's mask
excludes it, so it is rejected there, and the positions after it (never emitted) reuse
that mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _allows(mask: torch.Tensor, token: int) -> bool:
    """Whether the int32 bitmask row `mask` allows `token`."""
    return 0 <= token < 32 * mask.shape[0] and bool((int(mask[token // 32]) >> (token % 32)) & 1)


def draft_bitmasks(grammar: Any, matcher: Any, drafts: Sequence[int]) -> torch.Tensor:
    """int32 [len(drafts) + 1, words]: the masks at the last known token and at each draft
    (`grammar` is the engine's `GrammarBackend`); leaves `matcher` as it found it."""
    rows: list[torch.Tensor] = []
    consumed = 0
    try:
        for i in range(len(drafts) + 1):
            rows.append(grammar.fill_bitmask([matcher])[0])
            if i == len(drafts) or not _allows(rows[-1], drafts[i]) or not matcher.consume_token(drafts[i]):
                break
            consumed += 1
            if matcher.is_stopped():
                break
    finally:
        if consumed:
            matcher.rollback(consumed)
    rows += [rows[-1]] * (len(drafts) + 1 - len(rows))
    return torch.stack(rows)


def step_bitmask(grammar: Any, constrained: Sequence[tuple[Any, Sequence[int]]]) -> torch.Tensor:
    """The masks of a step's constrained requests, given as (matcher, drafts) in sampler
    order: one row for a request without drafts (computed together, in parallel), one per
    verified position for a request with drafts."""
    plain = [matcher for matcher, drafts in constrained if not drafts]
    plain_rows = iter(grammar.fill_bitmask(plain)) if plain else iter(())
    parts = [draft_bitmasks(grammar, m, d) if d else next(plain_rows)[None] for m, d in constrained]
    return torch.cat(parts)
