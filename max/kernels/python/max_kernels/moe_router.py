"""A mixture-of-experts router for few tokens in one kernel: logits, top-k, routing weights.

The router multiplies each token x [H] by its weight W [E, H] (plus a bias, gpt-oss) and
keeps each token's k best experts, under one of two rules (those of `max.nn.moe`):
- `SOFTMAX_TOPK` (Qwen3-MoE): a float32 softmax over all E logits, the k largest
  probabilities, renormalized to sum to one when `renormalize` (`norm_topk_prob`);
- `TOPK_SOFTMAX` (gpt-oss): the k largest logits, then a float32 softmax over those k.
`moe_route_reference` is the rule in torch (F.linear, torch.softmax, torch.topk; the CPU
path, and `SparseMoE.route` as it always computed it). In torch a decode step spends six
to ten small kernels on it (cuBLAS's split-K product and its reduction, the softmax, the
top-k's radix select and sort, the renormalization); `moe_route` is one.

The kernel: each program takes a block of experts' rows of W, streams them once (its first
slice requested before it waits for the kernel that produced x, under PDL) against every
token's row of x (up to `ROUTER_MAX_TOKENS`), rounds the logits to x's dtype as F.linear's
output is rounded, and writes them to a scratch buffer. The program that finishes last
(`grid_counters`) reads all the logits back and, per token, picks the k best and computes
their weights. No host synchronisation and fixed shapes: safe in a CUDA graph.

Which experts, in which order: the k largest logits, largest first, equal logits in
ascending expert id; this is torch.topk's choice on CUDA (its gatherTopK keeps the values
tied with the k-th in index order). Ranking by logit rather than by probability
(`SOFTMAX_TOPK`) is the same order, the softmax being increasing, except where two
distinct logits less than ~6e-8 apart give the same float32 probability at the k-th place
(bfloat16 logits that close are below ~1e-5 in magnitude). Equal logits inside the k come
out in ascending id here; torch sorts the k by value with an unstable network, so it may
list such a pair the other way round (the same experts with the same weights: the layer's
output differs only by its summation order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from max_kernels import grid_counters
from max_kernels.grid_counters import arrive_last, reset
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

SOFTMAX_TOPK = "softmax_topk"
TOPK_SOFTMAX = "topk_softmax"
ROUTINGS = (SOFTMAX_TOPK, TOPK_SOFTMAX)

# Up to this many tokens the fused kernel routes (decode steps); above, the torch rule,
# whose kernels are then no longer short.
ROUTER_MAX_TOKENS = 16
# Every logit of a token sits in the last program's registers (with 9 bits of its key),
# and each pick is one pass over them.
ROUTER_MAX_EXPERTS = 256
ROUTER_MAX_TOP_K = 32
_ID_BITS = tl.constexpr(9)
_ID_MASK = tl.constexpr(511)


def _check_routing(routing: str) -> None:
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r} (choose from {', '.join(ROUTINGS)})")


def moe_route_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    *,
    routing: str = SOFTMAX_TOPK,
    renormalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's k chosen experts by router logits x @ weight.T (+ bias), in torch.

    Args:
        x: [T, H] activations.
        weight: [E, H] router weight (nn.Linear's), in x's dtype.
        bias: optional [E] router bias.
        top_k: experts per token.
        routing: `SOFTMAX_TOPK` or `TOPK_SOFTMAX` (see the module docstring).
        renormalize: under `SOFTMAX_TOPK`, rescale the k probabilities to sum to one.

    Returns:
        (float32 weights [T, k], int64 expert ids [T, k]), largest first.
    """
    _check_routing(routing)
    logits = F.linear(x, weight, bias)
    if routing == TOPK_SOFTMAX:
        top, chosen = torch.topk(logits, top_k, dim=-1)
        return F.softmax(top, dim=-1, dtype=torch.float32), chosen
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, chosen


def kernel_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, top_k: int) -> bool:
    """Whether `moe_route` takes these inputs: 1..ROUTER_MAX_TOKENS rows of a float dtype,
    the weight (and bias) in it with contiguous rows, up to ROUTER_MAX_EXPERTS experts and
    ROUTER_MAX_TOP_K picks, and the device's arrival counters at hand (not first allocated
    inside a graph capture)."""
    return (
        x.dim() == 2
        and 1 <= x.shape[0] <= ROUTER_MAX_TOKENS
        and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and weight.dim() == 2
        and weight.dtype == x.dtype
        and weight.shape[1] == x.shape[1]
        and 1 <= top_k <= min(weight.shape[0], ROUTER_MAX_TOP_K)
        and weight.shape[0] <= ROUTER_MAX_EXPERTS
        and x.stride(-1) == 1
        and weight.stride(-1) == 1
        and (bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0]))
        and grid_counters.counters(x.device) is not None
    )


def moe_route(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    *,
    routing: str = SOFTMAX_TOPK,
    renormalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`moe_route_reference` in one Triton kernel (inputs as `kernel_applies` says).

    The logits are rounded to x's dtype as the reference's are, from float32 sums in
    another order than cuBLAS's (a logit may differ by one unit in the last place); given
    the same logits the experts are the same (module docstring) and the weights agree to
    float32 rounding (exp and sums in another order).
    """
    _check_routing(routing)
    if not kernel_applies(x, weight, bias, top_k):
        raise ValueError(
            f"moe_route takes 1..{ROUTER_MAX_TOKENS} rows, up to {ROUTER_MAX_EXPERTS} experts in x's dtype "
            f"and up to {ROUTER_MAX_TOP_K} picks, "
            f"got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}, k={top_k}"
        )
    num_tokens, hidden = x.shape
    block_e, block_h = pick_router_blocks(num_tokens, weight.shape[0], hidden)
    return _route(x, weight, bias, top_k, routing, renormalize, block_e, block_h)


def pick_router_blocks(num_tokens: int, num_experts: int, hidden: int) -> tuple[int, int]:
    """(experts per program, columns per loop step). About 32 programs at one token, each a
    few rows of W streamed in one or two slices, all in flight at once (Qwen3-30B-A3B:
    4 x 2048, gpt-oss-20b: 1 x 2880); at more tokens fewer rows per program, so that the
    [tokens, rows, columns] products stay within 8192 values."""
    block_t = triton.next_power_of_2(num_tokens)
    block_e = max(1, min(triton.next_power_of_2(triton.cdiv(num_experts, 32)), 8 // block_t))
    block_h = min(triton.next_power_of_2(hidden), max(64, 8192 // (block_t * block_e)))
    return block_e, block_h


def _route(x, weight, bias, top_k, routing, renormalize, block_e: int, block_h: int):
    """`moe_route` with its tiles given (tests loop over H with small ones)."""
    num_tokens, hidden = x.shape
    num_experts = weight.shape[0]
    counter = grid_counters.counters(x.device)
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=x.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int64, device=x.device)
    logits = torch.empty(num_tokens, num_experts, dtype=torch.float32, device=x.device)
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    block_t = triton.next_power_of_2(num_tokens)
    e_pad = triton.next_power_of_2(num_experts)
    elements = max(block_t * block_e * block_h, 2 * block_t * e_pad)
    _router_kernel[(triton.cdiv(num_experts, block_e),)](
        x, weight, bias if bias is not None else weight, logits, counter, weights, ids,
        num_tokens, num_experts, hidden, x.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None,
        SOFTMAX_FIRST=routing == SOFTMAX_TOPK,
        RENORMALIZE=renormalize,
        TOP_K=top_k,
        BLOCK_T=block_t,
        BLOCK_E=block_e,
        BLOCK_H=block_h,
        E_PAD=e_pad,
        K_PAD=triton.next_power_of_2(top_k),
        num_warps=8 if elements >= 8192 else 4,
        **pdl_launch(x),
    )  # fmt: skip
    return weights, ids


@triton.jit
def _router_kernel(
    x_ptr, w_ptr, b_ptr, logits_ptr, counter_ptr, weights_ptr, ids_ptr,
    T, E, H, stride_xt, stride_we,
    HAS_BIAS: tl.constexpr,
    SOFTMAX_FIRST: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
    E_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    offs_t = tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    offs_h = tl.arange(0, BLOCK_H)
    w_rows = w_ptr + offs_e.to(tl.int64)[:, None] * stride_we
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * stride_xt
    if USE_PDL:
        gdc_launch_dependents()
    # The router's weight does not depend on the previous kernel: its first slice is
    # requested before the wait, so it streams in while that kernel finishes.
    w = tl.load(w_rows + offs_h[None, :], mask=e_ok[:, None] & (offs_h < H)[None, :], other=0.0)
    if USE_PDL:
        gdc_wait()
    acc = tl.zeros([BLOCK_T, BLOCK_E, BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        xv = tl.load(x_rows + h0 + offs_h[None, :], mask=t_ok[:, None] & (h0 + offs_h < H)[None, :], other=0.0)
        # The next slice in flight while this one is multiplied (empty past the last).
        nxt = h0 + BLOCK_H + offs_h
        w_next = tl.load(w_rows + nxt[None, :], mask=e_ok[:, None] & (nxt < H)[None, :], other=0.0)
        acc += w.to(tl.float32)[None, :, :] * xv.to(tl.float32)[:, None, :]
        w = w_next
    logits = tl.sum(acc, axis=2)
    if HAS_BIAS:
        logits += tl.load(b_ptr + offs_e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
    # F.linear's output is in x's dtype: every rule starts from these rounded logits.
    logits = logits.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(logits_ptr + offs_t[:, None] * E + offs_e[None, :], logits, mask=t_ok[:, None] & e_ok[None, :])
    if arrive_last(counter_ptr, tl.num_programs(0)):
        _pick_and_weigh(
            logits_ptr, weights_ptr, ids_ptr, T, E, SOFTMAX_FIRST, RENORMALIZE, TOP_K, BLOCK_T, E_PAD, K_PAD
        )
        reset(counter_ptr)


@triton.jit
def _pick_and_weigh(
    logits_ptr, weights_ptr, ids_ptr, T, E,
    SOFTMAX_FIRST: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
    E_PAD: tl.constexpr,
    K_PAD: tl.constexpr,
):  # fmt: skip
    """Every token's k best experts and their weights, from the logits [T, E] in memory."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, E_PAD)
    offs_k = tl.arange(0, K_PAD)
    t_ok = offs_t < T
    e_ok = offs_e < E
    k_ok = offs_k < TOP_K
    # Written by other programs: read from L2, past this program's L1.
    logits = tl.load(
        logits_ptr + offs_t[:, None] * E + offs_e[None, :],
        mask=t_ok[:, None] & e_ok[None, :],
        other=0.0,
        cache_modifier=".cg",
    )
    # One int64 key per logit: its float32 bits made order-preserving as signed integers
    # (-0.0 below +0.0, as in torch.topk's radix order), then the id reversed: the largest
    # key is the largest logit and, among equal ones, the lowest id. One max per pick.
    bits = logits.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
    key = (ordered << _ID_BITS) | (E_PAD - 1 - offs_e).to(tl.int64)[None, :]
    # Below every key (|ordered| < 2 ** 31): taken, or past the last expert.
    gone = tl.full([BLOCK_T, E_PAD], -(1 << 62), tl.int64)
    key = tl.where(e_ok[None, :], key, gone)
    top = tl.zeros([BLOCK_T, K_PAD], dtype=tl.float32)
    ids = tl.zeros([BLOCK_T, K_PAD], dtype=tl.int64)
    for i in tl.static_range(TOP_K):
        best = tl.max(key, axis=1)
        idx = E_PAD - 1 - (best & _ID_MASK)
        key = tl.where(offs_e[None, :] == idx[:, None], gone, key)
        ob = (best >> _ID_BITS).to(tl.int32)
        value = tl.where(ob >= 0, ob, ob ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        top = tl.where(offs_k[None, :] == i, value[:, None], top)
        ids = tl.where(offs_k[None, :] == i, idx[:, None], ids)
    # The first pick is the row's largest logit: the softmax's shift.
    m = tl.max(tl.where(offs_k[None, :] == 0, top, float("-inf")), axis=1)
    if SOFTMAX_FIRST:
        total = tl.sum(tl.where(e_ok[None, :], tl.exp(logits - m[:, None]), 0.0), axis=1)
        w = tl.exp(top - m[:, None]) / total[:, None]
        if RENORMALIZE:
            w = w / tl.sum(tl.where(k_ok[None, :], w, 0.0), axis=1)[:, None]
    else:
        ex = tl.where(k_ok[None, :], tl.exp(top - m[:, None]), 0.0)
        w = ex / tl.sum(ex, axis=1)[:, None]
    out = offs_t[:, None] * TOP_K + offs_k[None, :]
    mask = t_ok[:, None] & k_ok[None, :]
    tl.store(weights_ptr + out, w, mask=mask)
    tl.store(ids_ptr + out, ids, mask=mask)
