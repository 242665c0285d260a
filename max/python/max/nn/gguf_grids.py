"""The quantization grids that a GGUF weight's decoded values already lie on.

A Q4_0, Q4_1 or Q4_K block decodes each run of 32 consecutive values as s * q + o for
integer codes q in [0, 15] (Q4_K: a scale and minimum per 32-value sub-block). Re-quantizing
such values by their group's min / max re-rounds every value unless the group happens to use
codes 0 and 15; recovering s (the smallest gap between distinct values, which every other
gap is a multiple of) gives the file's own grid back, and the codes survive exactly (as
Q8_0's do in the int8 layout). Groups whose values are not on a 16-step grid of that
spacing (a constant group, float rounding beyond tolerance) take min / max
(`int4_groups_on_grid`).
"""

from __future__ import annotations

import torch

# Gaps below this share of a group's range are float32 rounding of equal values, and values
# this close (in steps) to a grid point are on it: decoding rounds s * q + o to ~1e-7.
_TOLERANCE = 1e-4
_OFF_GRID = 1e-3


# Rows worked on at once: the sort's copies of a 128k-row embedding table would otherwise
# take several times the table's bytes on the device while it loads.
_ROWS_PER_CHUNK = 4096


def int4_groups_on_grid(weight: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) float32 [N, K / group_size] of a weight [N, K] decoded from 4-bit GGUF
    blocks, in our int4 layout's terms (w = (code - zero) * scale), on the file's grid where
    a group's values allow, else by min / max."""
    parts = [_groups(chunk, group_size) for chunk in weight.split(_ROWS_PER_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = weight.shape
    w = weight.float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    span = (hi - lo).clamp(min=1e-30)
    scales = (span / 15.0).clamp(min=1e-12)
    # A group whose values span codes 0 and 15 (every Q4_1 block's do) is on its min / max
    # grid already; only the others are searched for their step (a sort of each group,
    # which took a SmolLM2 load from 0.6 to 2.4 s when every group was searched).
    steps = (w - lo[..., None]) / scales[..., None]
    search = (steps - steps.round()).abs().amax(-1) > _OFF_GRID
    if search.any():
        step = _grid_step(w[search], lo[search], span[search])
        scales[search] = torch.where(torch.isfinite(step), step, scales[search])
    return scales, -lo / scales


def _grid_step(w: torch.Tensor, lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The grid step of each group w [S, group] (the smallest gap between distinct values,
    which every other gap is a multiple of) where its values lie on a 16-step grid from lo;
    inf elsewhere."""
    ordered = w.sort(dim=-1).values
    gaps = ordered[..., 1:] - ordered[..., :-1]
    gaps = torch.where(gaps > span[..., None] * _TOLERANCE, gaps, torch.full_like(gaps, float("inf")))
    step = gaps.amin(-1)
    steps = (w - lo[..., None]) / step[..., None]
    on_grid = torch.isfinite(step) & ((steps - steps.round()).abs().amax(-1) <= _OFF_GRID)
    on_grid &= steps.round().amax(-1) <= 15
    return torch.where(on_grid, step, torch.full_like(step, float("inf")))
