"""Routed experts of a mixture-of-experts layer: every token's k gated MLPs, summed by weight.

For each token t and each of its k chosen experts e (with router weight w):
    out[t] += w * down_e(act(gate_e(x[t])) * up_e(x[t]))
with the gate and up projections stacked in one weight per expert ([E, 2I, H]: rows [0, I)
gate, [I, 2I) up, as nn.Linear stores [out, in]) and optional biases (gpt-oss has them).
`act(gate) * up` is one of `moe_activation`'s gated activations: SwiGLU ("silu"), GeGLU
("gelu_tanh") or gpt-oss's clamped SwiGLU ("clamped_swiglu").

Up to `moe_gemv.GEMV_MAX_TOKENS` tokens (decode steps) the Triton path is `moe_gemv`'s
GEMVs over each pair's expert rows, with no alignment. Above, it works as vLLM's and
SGLang's fused MoE do, without host synchronisation:
1. align: the T*k (token, slot) pairs are sorted by expert and each expert's group is padded
   to a multiple of BLOCK_M, in a buffer of the static upper bound of padded rows, with the
   expert of every BLOCK_M block beside it (blocks past the end get expert E: idle);
2. a grouped GEMM whose program takes one block of one expert's rows and one slice of the
   gate and the matching slice of the up projection, gathering the token rows of x, and
   applies the activation in its epilogue -> [T*k, I];
3. a grouped GEMM of those rows by the expert's down projection, times the router weight
   -> [T*k, H];
4. a sum over each token's k slots.
The epilogues round where the reference does (the projections, the activation and the
weighted output are each rounded to x's dtype), so both agree to the dtype's precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from max_kernels.backend import interpreting
from max_kernels.moe_activation import (
    SWIGLU_ALPHA,
    SWIGLU_LIMIT,
    _gated_activation,
    _weighted_output,
    activation_fn,
    check_activation,
)
from max_kernels.moe_gemv import GEMV_MAX_TOKENS, fused_moe_gemv

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803


def fused_moe_reference(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = SWIGLU_ALPHA,
    limit: float = SWIGLU_LIMIT,
) -> torch.Tensor:
    """The routed experts' gated MLPs, summed by router weight, one expert at a time.

    Args:
        x: [T, H] token activations.
        w_gate_up: [E, 2I, H]; rows [0, I) are the gate projection, [I, 2I) the up one.
        w_down: [E, H, I].
        topk_weights: float32 [T, k] router weights of the chosen experts.
        topk_ids: int32 or int64 [T, k] chosen experts (distinct within a row, as topk gives).
        activation: "silu" (SwiGLU, Qwen3-MoE), "gelu_tanh" (GeGLU) or "clamped_swiglu"
            (gpt-oss; see the module docstring).
        b_gate_up: optional [E, 2I] bias of the gate and up projections.
        b_down: optional [E, H] bias of the down projection.
        alpha, limit: the sigmoid gain and the clamp of "clamped_swiglu" (unused otherwise).

    Returns:
        [T, H] in x's dtype. Each expert's MLP is computed as `max.nn.mlp.GatedMLP` does
        (F.linear in x's dtype) and weighted outputs are added to their tokens' rows expert
        by expert (in x's dtype), as transformers' MoE layers do with index_add.
    """
    act = activation_fn(activation, alpha, limit)
    inter = w_gate_up.shape[1] // 2

    def expert_mlp(e: int, xe: torch.Tensor) -> torch.Tensor:
        bg = bu = bd = None
        if b_gate_up is not None:
            bg, bu = b_gate_up[e, :inter], b_gate_up[e, inter:]
        if b_down is not None:
            bd = b_down[e]
        return _gated_mlp(xe, w_gate_up[e, :inter], w_gate_up[e, inter:], w_down[e], bg, bu, bd, act)

    return _sum_routed_experts(x, topk_weights, topk_ids, w_gate_up.shape[0], expert_mlp)


def _gated_mlp(xe, w_gate, w_up, w_down, b_gate, b_up, b_down, act) -> torch.Tensor:
    """One expert's MLP on its rows, as `max.nn.mlp.GatedMLP` computes it (in xe's dtype)."""
    gate = F.linear(xe, w_gate, b_gate)
    up = F.linear(xe, w_up, b_up)
    return F.linear(act(gate, up), w_down, b_down)


def _sum_routed_experts(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    expert_mlp: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """sum over k of weight * expert_mlp(expert, x[token]), one used expert at a time in
    ascending order, each weighted output added to its tokens' rows in x's dtype.

    `expert_mlp(e, xe)` maps the rows of x that chose expert e to that expert's outputs;
    the references of every weight format share this loop, so they sum identically.
    """
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token_of = order // k
    weights = topk_weights.to(x.dtype).reshape(-1)
    out = torch.zeros_like(x)
    start = 0
    for e, count in enumerate(counts):
        if count:
            rows = order[start : start + count]
            tokens = token_of[start : start + count]
            y = expert_mlp(e, x[tokens])
            # A token picks an expert once, so `tokens` has no repeats and this is exactly
            # index_add_ (out[t] + y, in x's dtype), without index_add_'s thread pool,
            # whose start-up costs ~1 ms per call on a busy CPU.
            out[tokens] += y * weights[rows, None]
        start += count
    return out


# ----------------------------------------------------------------------------- Triton


@dataclass(frozen=True)
class MoeBlocks:
    """Tile sizes of the two grouped GEMMs (block_n_gate_up is per projection: the gate and
    up accumulators are each block_m x block_n_gate_up)."""

    block_m: int
    block_n_gate_up: int
    block_n_down: int
    block_k: int
    num_warps: int
    num_stages: int


def _pick_blocks(num_pairs: int, num_experts: int) -> MoeBlocks:
    # Few rows per expert (decode): thin row blocks, so little of each tile is padding.
    rows_per_expert = num_pairs / num_experts
    if rows_per_expert <= 16:
        return MoeBlocks(16, 64, 64, 128, num_warps=4, num_stages=3)
    if rows_per_expert <= 48:
        return MoeBlocks(32, 64, 128, 64, num_warps=4, num_stages=3)
    if rows_per_expert <= 96:
        return MoeBlocks(64, 64, 128, 64, num_warps=4, num_stages=3)
    # Prefill steps: 128-row blocks read each expert's weights half as often (gpt-oss-20b's
    # layer, one H100: 1956 against 2196 us at 2048 tokens, `mxfp4_moe_bench --large`).
    return MoeBlocks(128, 64, 128, 64, num_warps=8, num_stages=3)


def _align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Pairs sorted by expert, each expert's group padded to block_m, and each block's expert.

    Returns (sorted_pairs int32 [num_blocks * block_m], block_expert int32 [num_blocks]):
    sorted_pairs holds flat pair indices (token * k + slot), T*k in padding rows; the expert
    of a block past the last group is num_experts. Sizes depend only on shapes.
    """
    flat = topk_ids.reshape(-1).long()
    num_pairs = flat.numel()
    device = flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    sorted_experts, order = torch.sort(flat, stable=True)
    rank = (
        torch.arange(num_pairs, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_experts]
    )
    dest = (ends - padded)[sorted_experts] + rank
    # At most min(E, T*k) groups are non-empty, each padded by fewer than block_m rows.
    max_rows = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    num_blocks = triton.cdiv(max_rows, block_m)
    sorted_pairs = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs.scatter_(0, dest, order.to(torch.int32))
    block_start = torch.arange(num_blocks, device=device, dtype=torch.int64) * block_m
    block_expert = torch.searchsorted(ends, block_start, right=True).to(torch.int32)
    return sorted_pairs, block_expert


@triton.jit
def _mma(acc, a, b, DOT_F32: tl.constexpr):
    # float32 operands take the IEEE path (not tf32); so do bfloat16 ones under the
    # interpreter, whose bfloat16 tl.dot is wrong.
    if DOT_F32:
        return acc + tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    h_ptr,
    pairs_ptr,
    block_expert_ptr,
    num_pairs,
    top_k,
    H,
    I,  # noqa: E741
    E,
    stride_xt,
    stride_we,
    stride_wn,
    stride_be,
    stride_ht,
    alpha,
    limit,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    active = expert < E
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    token = (pair // top_k).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    offs_k = tl.arange(0, BLOCK_K)
    e64 = tl.where(active, expert, 0).to(tl.int64)

    a_ptrs = x_ptr + token[:, None] * stride_xt + offs_k[None, :]
    g_ptrs = w_ptr + e64 * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + I * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Idle blocks (past the last expert group) run no K iterations.
    k_end = tl.where(active, H, 0)
    for k0 in range(0, k_end, BLOCK_K):
        k_ok = offs_k < H - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wg = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        wu = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = _mma(acc_g, a, wg, DOT_F32)
        acc_u = _mma(acc_u, a, wu, DOT_F32)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K

    if HAS_BIAS:
        # Idle blocks read no bias: their column bound is 0.
        b_ok = offs_n < tl.where(active, I, 0)
        bias = b_ptr + e64 * stride_be + offs_n
        acc_g += tl.load(bias, mask=b_ok, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(bias + I, mask=b_ok, other=0.0).to(tl.float32)[None, :]
    h = _gated_activation(acc_g, acc_u, h_ptr.dtype.element_ty, ACT, alpha, limit)
    h_ptrs = h_ptr + pair.to(tl.int64)[:, None] * stride_ht + offs_n[None, :]
    tl.store(h_ptrs, h, mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    weights_ptr,
    y_ptr,
    pairs_ptr,
    block_expert_ptr,
    num_pairs,
    H,
    I,  # noqa: E741
    E,
    stride_ht,
    stride_we,
    stride_wn,
    stride_be,
    stride_yt,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    active = expert < E
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pairs_ptr + offs_m)
    row_ok = pair < num_pairs
    pair64 = pair.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    offs_k = tl.arange(0, BLOCK_K)
    e64 = tl.where(active, expert, 0).to(tl.int64)

    a_ptrs = h_ptr + pair64[:, None] * stride_ht + offs_k[None, :]
    w_ptrs = w_ptr + e64 * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(active, I, 0)
    for k0 in range(0, k_end, BLOCK_K):
        k_ok = offs_k < I - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(acc, a, w, DOT_F32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    if HAS_BIAS:
        b_ok = offs_n < tl.where(active, H, 0)
        bias = b_ptr + e64 * stride_be + offs_n
        acc += tl.load(bias, mask=b_ok, other=0.0).to(tl.float32)[None, :]
    weight = tl.load(weights_ptr + pair64, mask=row_ok, other=0.0)
    y = _weighted_output(acc, weight[:, None], y_ptr.dtype.element_ty)
    y_ptrs = y_ptr + pair64[:, None] * stride_yt + offs_n[None, :]
    tl.store(y_ptrs, y, mask=row_ok[:, None] & n_ok[None, :])


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str = "silu",
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    alpha: float = SWIGLU_ALPHA,
    limit: float = SWIGLU_LIMIT,
) -> torch.Tensor:
    """Triton `fused_moe_reference`: up to `GEMV_MAX_TOKENS` tokens `moe_gemv`'s GEMVs,
    above them the alignment, two grouped GEMMs and a sum over the k slots."""
    if x.shape[0] <= GEMV_MAX_TOKENS:
        return fused_moe_gemv(
            x, w_gate_up, w_down, topk_weights, topk_ids, activation=activation,
            b_gate_up=b_gate_up, b_down=b_down, alpha=alpha, limit=limit,
        )  # fmt: skip
    num_pairs = topk_ids.numel()
    blocks = _pick_blocks(num_pairs, w_gate_up.shape[0])
    return _fused_moe(
        x, w_gate_up, w_down, topk_weights, topk_ids, activation, b_gate_up, b_down, blocks, alpha, limit
    )


def _fused_moe(
    x,
    w_gate_up,
    w_down,
    topk_weights,
    topk_ids,
    activation,
    b_gate_up,
    b_down,
    blocks,
    alpha=SWIGLU_ALPHA,
    limit=SWIGLU_LIMIT,
):
    act = check_activation(activation)
    num_tokens, hidden = x.shape
    num_experts, two_i, _ = w_gate_up.shape
    inter = two_i // 2
    k = topk_ids.shape[1]
    num_pairs = num_tokens * k
    if num_tokens == 0:
        return torch.empty_like(x)
    x, w_gate_up, w_down = (
        t if t.stride(-1) == 1 else t.contiguous() for t in (x, w_gate_up, w_down)
    )
    if b_gate_up is not None and b_gate_up.stride(-1) != 1:
        b_gate_up = b_gate_up.contiguous()
    if b_down is not None and b_down.stride(-1) != 1:
        b_down = b_down.contiguous()
    weights = topk_weights.reshape(-1).contiguous()
    bm = blocks.block_m
    sorted_pairs, block_expert = _align(topk_ids, num_experts, bm)
    num_blocks = block_expert.shape[0]
    dot_f32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreting())
    # Blocks no wider than the (power-of-two padded) dimension, and at least tl.dot's 16.
    bn1 = max(16, min(blocks.block_n_gate_up, triton.next_power_of_2(inter)))
    bn2 = max(16, min(blocks.block_n_down, triton.next_power_of_2(hidden)))
    bk1 = max(16, min(blocks.block_k, triton.next_power_of_2(hidden)))
    bk2 = max(16, min(blocks.block_k, triton.next_power_of_2(inter)))
    launch = dict(num_warps=blocks.num_warps, num_stages=blocks.num_stages)

    h = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, bn1))](
        x,
        w_gate_up,
        b_gate_up if b_gate_up is not None else x,
        h,
        sorted_pairs,
        block_expert,
        num_pairs,
        k,
        hidden,
        inter,
        num_experts,
        x.stride(0),
        w_gate_up.stride(0),
        w_gate_up.stride(1),
        b_gate_up.stride(0) if b_gate_up is not None else 0,
        h.stride(0),
        float(alpha),
        float(limit),
        HAS_BIAS=b_gate_up is not None,
        ACT=act,
        DOT_F32=dot_f32,
        BLOCK_M=bm,
        BLOCK_N=bn1,
        BLOCK_K=bk1,
        **launch,
    )
    y = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    _down_kernel[(num_blocks, triton.cdiv(hidden, bn2))](
        h,
        w_down,
        b_down if b_down is not None else x,
        weights,
        y,
        sorted_pairs,
        block_expert,
        num_pairs,
        hidden,
        inter,
        num_experts,
        h.stride(0),
        w_down.stride(0),
        w_down.stride(1),
        b_down.stride(0) if b_down is not None else 0,
        y.stride(0),
        HAS_BIAS=b_down is not None,
        DOT_F32=dot_f32,
        BLOCK_M=bm,
        BLOCK_N=bn2,
        BLOCK_K=bk2,
        **launch,
    )
    return y.view(num_tokens, k, hidden).sum(dim=1)
