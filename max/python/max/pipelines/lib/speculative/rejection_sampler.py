"""Which draft tokens the target accepts, keeping the target's distribution exactly.

Drafts from prompt lookup, the oracle or a greedy draft model are deterministic: their
draft distribution q is one-hot on the draft token d. Rejection sampling (Leviathan et al.,
Chen et al.) then accepts d with probability min(1, p(d) / 1) = p(d) and, on rejection,
draws from the residual max(0, p - q) renormalised, which is p with d removed. Drawing a
token t from p and accepting when t == d does exactly that: P(accept) = p(d), and t given
t != d follows p without d. The engine does it this way (`accepted_draws`): the target's
draw at each verified position is the one the ordinary sampler makes there (same seed, same
output position, same counter-based noise), so a seeded request emits the very tokens it
emits without speculation, and greedy decoding (the argmax) is token-for-token unchanged.

`rejection_sample` is the general rule for drafts sampled from a distribution q (a draft
model sampling at a temperature): accept d_i with probability min(1, p_i(d_i) / q_i(d_i)),
else draw from normalise(max(0, p_i - q_i)) and stop; after k acceptances, draw a bonus
token from p_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accepted_draws(drafts: Sequence[int], draws: Sequence[int]) -> tuple[int, list[int]]:
    """(accepted, emitted) for one request: `draws` are the target's tokens at the k + 1
    verified positions (len(drafts) + 1 of them); drafts are accepted while they equal the
    draw at their position, and the draws up to the first disagreement (or the bonus draw
    after the last draft) are emitted."""
    if len(draws) != len(drafts) + 1:
        raise ValueError(f"{len(drafts)} drafts need {len(drafts) + 1} draws (got {len(draws)})")
    accepted = 0
    while accepted < len(drafts) and drafts[accepted] == draws[accepted]:
        accepted += 1
    return accepted, list(draws[: accepted + 1])


def rejection_sample(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    drafts: Sequence[int],
    generator: torch.Generator | None = None,
) -> tuple[int, list[int]]:
    """(accepted, emitted) for drafts sampled from `draft_probs` [k, V], verified against
    `target_probs` [k + 1, V] (rows are probability vectors)."""
    k = len(drafts)
    if target_probs.shape[0] != k + 1 or draft_probs.shape[0] != k:
        raise ValueError(f"{k} drafts need {k + 1} target rows and {k} draft rows")
    emitted: list[int] = []
    for i, d in enumerate(drafts):
        p, q = float(target_probs[i, d]), float(draft_probs[i, d])
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if q > 0 and u < min(1.0, p / q):
            emitted.append(int(d))
            continue
        residual = (target_probs[i].double() - draft_probs[i].double()).clamp(min=0)
        if float(residual.sum()) <= 0:  # p == q: no residual mass, draw from p itself
            residual = target_probs[i].double()
        emitted.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return i, emitted
    bonus = torch.multinomial(target_probs[k].double(), 1, generator=generator)
    emitted.append(int(bonus))
    return k, emitted
