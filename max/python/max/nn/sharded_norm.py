"""RMSNorm over features that tensor parallelism splits across ranks.

OLMo 2 normalizes the whole q projection (every head together) and the whole k projection.
Under tensor parallelism a rank holds only its heads' columns, so its own mean of squares
is not the row's: each rank sums the squares of its columns, one all-reduce adds the ranks'
sums (for several tensors at once, a [T, n] tensor), and each rank scales its columns by
the row's statistic and its slice of the norm weight (the layer that owns the norm declares
that slice in its `checkpoint_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from max.nn.norm import RMSNorm
from max.nn.parallel import TensorParallel, all_reduce


def rms_norm_across_ranks(
    xs: Sequence[torch.Tensor], norms: Sequence[RMSNorm], tp: TensorParallel
) -> list[torch.Tensor]:
    """Each `xs[i]` [T, n_i], this rank's columns of a row split evenly across `tp`,
    normalized by `norms[i]` (this rank's slice of the weight) with the mean square of the
    whole row; one all-reduce serves all of `xs`.

    In a single process this is `norms[i](xs[i])`, the very same computation. A part held by
    several ranks (KV heads replicated when there are fewer than ranks) counts once per
    holder in the sum and in the width alike, so the mean is still the row's.
    """
    if len(xs) != len(norms):
        raise ValueError(f"{len(xs)} tensors for {len(norms)} norms")
    if tp.size == 1:
        return [norm(x) for x, norm in zip(xs, norms)]
    floats = [x.float() for x in xs]
    squares = torch.stack([f.pow(2).sum(-1) for f in floats], dim=-1)  # [T, len(xs)]
    all_reduce(squares, tp)
    out = []
    for i, (x, f, norm) in enumerate(zip(xs, floats, norms)):
        mean = squares[:, i : i + 1] / (x.shape[-1] * tp.size)
        # Rounding as `rms_norm_reference`: Llama casts before the weight, Gemma after.
        f = f * torch.rsqrt(mean + norm.eps)
        if norm.gemma:
            out.append((f * (1.0 + norm.weight.float())).to(x.dtype))
        else:
            out.append(norm.weight * f.to(x.dtype))
    return out
