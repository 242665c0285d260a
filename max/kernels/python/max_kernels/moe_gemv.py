"""Routed experts for a few tokens (decode steps): GEMVs over each chosen expert's rows.

`mixture_of_experts.fused_moe` takes this path up to `GEMV_MAX_TOKENS` tokens. There the
step's T*k (token, slot) pairs each need one expert's rows, and the grouped GEMMs cost
more around the product than in it: their alignment of the pairs by expert is a dozen
small torch kernels (a count, a sort, cumulative sums, scatters), and their tiles are
mostly padding rows. Here nothing is sorted:
1. gate/up: a program per (pair, slice of BLOCK_N features) streams its expert's gate and
   up rows of the slice in BLOCK_K columns against the token's row of x (the next slice
   requested before the current one is multiplied, as `max_kernels.gemv` does) and
   applies the activation in its epilogue -> h [T*k, I];
2. down: a program per (token, slice of BLOCK_N outputs) streams the slice's rows of each
   of the token's k experts in turn against the pair's row of h, weights each expert's
   output by its router weight and adds the k in float32 -> out [T, H]; no [T*k, H]
   buffer, no separate sum over the slots.
Pairs (and tokens) vary fastest in the launch order, so tokens that chose the same expert
read its rows while they are in L2; at one token the k experts are distinct and every
weight byte is read once, marked evict-first (x, h and the routing stay in L2).

Rounding is the grouped path's (and the reference's): each projection, the activation,
each expert's output and its router weight in x's dtype; the k weighted outputs are summed
in float32 and rounded once (the reference adds them in x's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from max_kernels.gemv import _load_weight_slice
from max_kernels.moe_activation import _gated_activation, _weighted_output, check_activation
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

# Up to this many tokens `fused_moe` takes the GEMVs; above, the grouped GEMMs. At 8
# tokens Qwen3-30B-A3B's 64 pairs mostly chose distinct experts (51 of 128 on average),
# so the GEMVs read little more than the GEMMs and skip their alignment kernels.
GEMV_MAX_TOKENS = 8


@dataclass(frozen=True)
class ExpertGemvBlocks:
    """Tiles of the few-token path: gate/up features per program (it reads 2 * block_n
    rows, gate and up) and its K slice; down rows per program and its K slice; warps."""

    block_n_gate_up: int
    block_k_gate_up: int
    block_n_down: int
    block_k_down: int
    num_warps: int = 4


def pick_gemv_blocks(hidden: int, inter: int) -> ExpertGemvBlocks:
    """`max_kernels.gemv`'s rule for one-row products, per projection: K slices of up to
    1024 and 4096 weights per program and loop step over four warps (32 weights, four
    16-byte loads, per thread). At Qwen3-30B-A3B's sizes (H=2048, I=768) and one token:
    3072 gate/up programs of 2 features x 2048, 512 down programs of 4 rows x 8 experts."""
    bk1 = min(1024, triton.next_power_of_2(hidden))
    bk2 = min(1024, triton.next_power_of_2(inter))
    return ExpertGemvBlocks(max(1, 2048 // bk1), bk1, max(1, 4096 // bk2), bk2)


def fused_moe_gemv(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str,
    b_gate_up: torch.Tensor | None,
    b_down: torch.Tensor | None,
    alpha: float,
    limit: float,
    blocks: ExpertGemvBlocks | None = None,
) -> torch.Tensor:
    """`mixture_of_experts.fused_moe` by GEMVs (arguments as there; `blocks`: tiles,
    `pick_gemv_blocks` when None). Any token count works; the path pays off for few.
    No host synchronisation: safe in a CUDA graph."""
    act = check_activation(activation)
    num_tokens, hidden = x.shape
    _, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    k = topk_ids.shape[1]
    if num_tokens == 0:
        return torch.empty_like(x)
    x, w_gate_up, w_down, b_gate_up, b_down = (
        t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (x, w_gate_up, w_down, b_gate_up, b_down)
    )
    ids = topk_ids.reshape(-1)
    ids = ids if ids.is_contiguous() else ids.contiguous()
    weights = topk_weights.reshape(-1)
    weights = weights if weights.is_contiguous() else weights.contiguous()
    cfg = blocks or pick_gemv_blocks(hidden, inter)
    bn1 = min(cfg.block_n_gate_up, triton.next_power_of_2(inter))
    bn2 = min(cfg.block_n_down, triton.next_power_of_2(hidden))
    # At one token every weight byte is read once: keep it from evicting x, h, routing.
    common = dict(EVICT_FIRST=num_tokens == 1, num_warps=cfg.num_warps, **pdl_launch(x))
    h = torch.empty(num_tokens * k, inter, dtype=x.dtype, device=x.device)
    out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=x.device)
    _gate_up_gemv_kernel[(num_tokens * k, triton.cdiv(inter, bn1))](
        x, w_gate_up, b_gate_up if b_gate_up is not None else x, ids, h,
        k, hidden, inter, x.stride(0), w_gate_up.stride(0), w_gate_up.stride(1),
        b_gate_up.stride(0) if b_gate_up is not None else 0, h.stride(0), float(alpha), float(limit),
        HAS_BIAS=b_gate_up is not None, ACT=act, BLOCK_N=bn1, BLOCK_K=cfg.block_k_gate_up, **common,
    )  # fmt: skip
    _down_gemv_kernel[(num_tokens, triton.cdiv(hidden, bn2))](
        h, w_down, b_down if b_down is not None else x, ids, weights, out,
        k, hidden, inter, h.stride(0), w_down.stride(0), w_down.stride(1),
        b_down.stride(0) if b_down is not None else 0, out.stride(0),
        HAS_BIAS=b_down is not None, BLOCK_N=bn2, BLOCK_K=cfg.block_k_down, **common,
    )  # fmt: skip
    return out


@triton.jit
def _gate_up_gemv_kernel(
    x_ptr, w_ptr, b_ptr, ids_ptr, h_ptr,
    top_k, H, I, stride_xt, stride_we, stride_wn, stride_be, stride_ht, alpha, limit,  # noqa: E741
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """One pair's act(gate) * up for features [pid_n * BLOCK_N, +BLOCK_N): rows n (gate)
    and I + n (up) of its expert's [2I, H] weight, against its token's row of x."""
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    if USE_PDL:
        # The expert comes from the router: nothing to read before the wait. The down
        # kernel then starts once every program here is past it, so the routing it reads
        # before its own wait is complete.
        gdc_wait()
        gdc_launch_dependents()
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    rk = tl.arange(0, BLOCK_K)
    gate_rows = w_ptr + expert * stride_we + offs_n.to(tl.int64) * stride_wn
    up_rows = gate_rows + I * stride_wn
    x_row = x_ptr + (pair // top_k).to(tl.int64) * stride_xt
    wg = _load_weight_slice(gate_rows, rk, H, n_ok, EVICT_FIRST)
    wu = _load_weight_slice(up_rows, rk, H, n_ok, EVICT_FIRST)
    acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        xv = tl.load(x_row + k0 + rk, mask=k0 + rk < H, other=0.0).to(tl.float32)
        # The next slice in flight while this one is multiplied (empty past the last).
        wg_next = _load_weight_slice(gate_rows, k0 + BLOCK_K + rk, H, n_ok, EVICT_FIRST)
        wu_next = _load_weight_slice(up_rows, k0 + BLOCK_K + rk, H, n_ok, EVICT_FIRST)
        acc_g += wg.to(tl.float32) * xv[None, :]
        acc_u += wu.to(tl.float32) * xv[None, :]
        wg = wg_next
        wu = wu_next
    gate = tl.sum(acc_g, axis=1)
    up = tl.sum(acc_u, axis=1)
    if HAS_BIAS:
        bias = b_ptr + expert * stride_be + offs_n
        gate += tl.load(bias, mask=n_ok, other=0.0).to(tl.float32)
        up += tl.load(bias + I, mask=n_ok, other=0.0).to(tl.float32)
    h = _gated_activation(gate, up, h_ptr.dtype.element_ty, ACT, alpha, limit)
    tl.store(h_ptr + pair.to(tl.int64) * stride_ht + offs_n, h, mask=n_ok)


@triton.jit
def _down_gemv_kernel(
    h_ptr, w_ptr, b_ptr, ids_ptr, weights_ptr, out_ptr,
    top_k, H, I, stride_ht, stride_we, stride_wn, stride_be, stride_ot,  # noqa: E741
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVICT_FIRST: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """One token's output rows [pid_n * BLOCK_N, +BLOCK_N): the sum over its k slots of
    router weight x (the expert's down rows . the pair's row of h + bias)."""
    token = tl.program_id(0)
    pid_n = tl.program_id(1)
    if USE_PDL:
        gdc_launch_dependents()
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < H
    row_offsets = rows.to(tl.int64) * stride_wn
    rk = tl.arange(0, BLOCK_K)
    first = token * top_k
    chunks = tl.cdiv(I, BLOCK_K)
    steps = top_k * chunks
    # The routing is complete (the gate/up kernel let this one start only past its own
    # wait): the first expert's rows stream in while gate/up finishes; h only after.
    expert = tl.load(ids_ptr + first).to(tl.int64)
    w = _load_weight_slice(w_ptr + expert * stride_we + row_offsets, rk, I, r_ok, EVICT_FIRST)
    if USE_PDL:
        gdc_wait()
    dt = out_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    # One loop over (slot, K slice), so that the next slice in flight crosses from one
    # expert to the next.
    for step in range(0, steps):
        slot = step // chunks
        k0 = (step - slot * chunks) * BLOCK_K
        nxt = step + 1
        slot_next = nxt // chunks
        has_next = nxt < steps
        expert_next = tl.load(ids_ptr + first + slot_next, mask=has_next, other=0).to(tl.int64)
        w_next = _load_weight_slice(
            w_ptr + expert_next * stride_we + row_offsets,
            (nxt - slot_next * chunks) * BLOCK_K + rk,
            tl.where(has_next, I, 0),
            r_ok,
            EVICT_FIRST,
        )
        hv = tl.load(h_ptr + (first + slot).to(tl.int64) * stride_ht + k0 + rk, mask=k0 + rk < I, other=0.0)
        acc += w.to(tl.float32) * hv.to(tl.float32)[None, :]
        if k0 + BLOCK_K >= I:
            # The expert's last slice: its weighted output joins the token's sum.
            y = tl.sum(acc, axis=1)
            if HAS_BIAS:
                y += tl.load(b_ptr + expert * stride_be + rows, mask=r_ok, other=0.0).to(tl.float32)
            total += _weighted_output(y, tl.load(weights_ptr + first + slot), dt).to(tl.float32)
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        w = w_next
        expert = expert_next
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + rows, total.to(dt), mask=r_ok)
