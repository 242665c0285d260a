"""The torch reference of the batched LoRA products: the CPU path, and what the Triton
kernels (`lora_sgmv`) must match.

A linear layer with LoRA adds, for each token t whose adapter sits in device slot s(t),

    y[t] += scale[s] * (x[t] @ A[s].T) @ B[s].T

and nothing for a base-model token (slot -1). It is done in two products, as Punica and
S-LoRA do: `shrink` (x [T, K] -> v [T, R'] through the slot's stacked A [R', K]) and `expand`
(v -> y through each output slice's B; a fused projection such as qkv has one A and one B
per slice, side by side). Adapters of rank below the slots' rank R are zero-padded, which
adds exact zeros.

The reference gathers the rows of each adapter and runs plain `F.linear` on them, in the
order PEFT computes (lora_A, then lora_B, then the scale, each rounded to the activations'
dtype), so that float32 is exact against transformers + PEFT; 16-bit operands on the CPU
are multiplied in float32 and rounded once (`_product`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _rows_by_slot(token_slots: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """(slot, its rows) for each adapter present; rows None when every token has that slot."""
    slots = token_slots.tolist()
    present = sorted({s for s in slots if s >= 0})
    if len(present) == 1 and min(slots) >= 0:
        return [(present[0], None)]
    return [(s, (token_slots == s).nonzero().squeeze(1)) for s in present]


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` in x's dtype. 16-bit operands on the CPU are multiplied in
    float32 and the result rounded once, which is what the 16-bit kernels compute (exact
    products, float32 sums) up to the order of the sums: oneDNN's bfloat16 kernels take
    tens of microseconds for these rank-sized shapes (one row times a [576, 16] B: ~30 us
    against ~5 in float32 on a Zen 4 core) and over a millisecond for eight rows."""
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return F.linear(x.float(), weight.float()).to(x.dtype)
    return F.linear(x, weight)


def lora_shrink_reference(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """v [T, R'] = x[t] @ a[slot(t)].T for x [T, K], a [S, R', K], token_slots int [T]
    (rows of base-model tokens are zero)."""
    v = x.new_zeros(x.shape[0], a.shape[1])
    for slot, rows in _rows_by_slot(token_slots):
        if rows is None:
            return _product(x, a[slot])
        v[rows] = _product(x[rows], a[slot])
    return v


def lora_expand_reference(
    y: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    scales: Sequence[float],
    token_slots: torch.Tensor,
    slices: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """y[t, o:o+n] += scales[slot] * v[t, jR:(j+1)R] @ b[slot, o:o+n].T for each output
    slice j = (o, n), in place; y [T, N], v [T, len(slices) * R], b [S, N, R]."""
    rank = b.shape[2]
    for slot, rows in _rows_by_slot(token_slots):
        scale = float(scales[slot])
        for j, (offset, size) in enumerate(slices):
            vj = v[:, j * rank : (j + 1) * rank] if rows is None else v[rows, j * rank : (j + 1) * rank]
            delta = _product(vj, b[slot, offset : offset + size]) * scale
            if rows is None:
                y[:, offset : offset + size] += delta
            else:
                y[rows, offset : offset + size] += delta
    return y
