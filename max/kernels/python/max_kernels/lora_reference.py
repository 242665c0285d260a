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


def _in_float32(x: torch.Tensor) -> bool:
    """Whether x's products are taken in float32 and rounded once to its dtype: 16-bit
    operands on the CPU. That is what the 16-bit kernels compute (exact products, float32
    sums) up to the order of the sums, and oneDNN's bfloat16 kernels take tens of
    microseconds for these rank-sized shapes (one row times a [576, 16] B: ~30 us against
    ~5 in float32 on a Zen 4 core) and over a millisecond for eight rows."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` in x's dtype (in float32 where `_in_float32`)."""
    if _in_float32(x):
        return F.linear(x.float(), weight.float()).to(x.dtype)
    return F.linear(x, weight)


# Up to this many rows per adapter on average, a step's products are taken token by token
# over gathered weights (`_adapter_rows`) rather than adapter by adapter.
_GATHER_ROWS_PER_ADAPTER = 16


def _adapter_rows(token_slots: torch.Tensor) -> list[tuple[int, torch.Tensor | None]] | None:
    """How a step's LoRA products are taken: None, token by token over gathered weights,
    where its adapters each have few rows (a decode step of many requests over many
    adapters: there the loop over adapters' dozens of small ops per projection cost more than
    gathering each token's A and B, a few MB at these sizes); else (slot, its rows) for each
    adapter present, rows None when every token has that slot."""
    slots = token_slots.tolist()
    present = sorted({s for s in slots if s >= 0})
    if len(present) > 1 and len(slots) <= _GATHER_ROWS_PER_ADAPTER * len(present):
        return None
    if len(present) == 1 and min(slots) >= 0:
        return [(present[0], None)]
    return [(s, (token_slots == s).nonzero().squeeze(1)) for s in present]


def _batched_product(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row t of x [T, K] times weights[t] [N, K].T -> [T, N], in x's dtype (in float32
    where `_in_float32`, as `_product`)."""
    if _in_float32(x):
        return torch.bmm(x.float()[:, None, :], weights.float().transpose(1, 2))[:, 0].to(x.dtype)
    return torch.bmm(x[:, None, :], weights.transpose(1, 2))[:, 0]


def lora_shrink_reference(x: torch.Tensor, a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """v [T, R'] = x[t] @ a[slot(t)].T for x [T, K], a [S, R', K], token_slots int [T]
    (rows of base-model tokens are zero)."""
    groups = _adapter_rows(token_slots)
    if groups is None:
        v = _batched_product(x, a.index_select(0, token_slots.clamp(min=0).long()))
        return torch.where((token_slots >= 0)[:, None], v, torch.zeros((), dtype=v.dtype))
    v = x.new_zeros(x.shape[0], a.shape[1])
    for slot, rows in groups:
        if rows is None:
            return _product(x, a[slot])
        v[rows] = _product(x[rows], a[slot])
    return v


def lora_expand_reference(
    y: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor | Sequence[float],
    token_slots: torch.Tensor,
    slices: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """y[t, o:o+n] += scales[slot] * v[t, jR:(j+1)R] @ b[slot, o:o+n].T for each output
    slice j = (o, n), in place; y [T, N], v [T, len(slices) * R], b [S, N, R], scales [S]
    (float32 tensor or floats)."""
    rank = b.shape[2]
    groups = _adapter_rows(token_slots)
    if groups is None:
        return _expand_gathered(y, v, b, scales, token_slots, slices)
    for slot, rows in groups:
        scale = float(scales[slot])
        for j, (offset, size) in enumerate(slices):
            vj = v[:, j * rank : (j + 1) * rank] if rows is None else v[rows, j * rank : (j + 1) * rank]
            delta = _product(vj, b[slot, offset : offset + size]) * scale
            if rows is None:
                y[:, offset : offset + size] += delta
            else:
                y[rows, offset : offset + size] += delta
    return y


def _expand_gathered(y, v, b, scales, token_slots, slices):
    """`lora_expand_reference` token by token over each token's gathered B, with the same
    roundings: the product in y's dtype, times the float scale (in float32, as a tensor times
    a Python float computes it), added to the adapter rows only."""
    rank = b.shape[2]
    index = token_slots.clamp(min=0).long()
    b_rows = b.index_select(0, index)  # [T, N, R]
    scale = torch.as_tensor(scales, dtype=torch.float32, device=y.device)[index][:, None]
    adapter_rows = (token_slots >= 0)[:, None]
    for j, (offset, size) in enumerate(slices):
        delta = _batched_product(v[:, j * rank : (j + 1) * rank], b_rows[:, offset : offset + size])
        delta = (delta.float() * scale).to(y.dtype)
        out = y[:, offset : offset + size]
        out.copy_(torch.where(adapter_rows, out + delta, out))
    return y
