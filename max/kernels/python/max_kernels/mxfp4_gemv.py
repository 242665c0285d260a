"""The few-token path of the MXFP4 experts (`mxfp4_moe`): CUDA-core GEMVs on packed weights.

Up to `GEMV_MAX_TOKENS` tokens (decode steps) `fused_moe_mxfp4` runs two launches of
`_mxfp4_gemv_kernel`, with no alignment of the pairs by expert: gate/up with the
activation in its epilogue, then down times the router weight, each a program per
(token, slot) pair and slice of output rows. A program streams its expert's packed rows
once (rows 2n and 2n + 1 together for gate/up), requesting the next slice of K before it
multiplies the current one. At one token the k active experts are distinct, so every
packed byte they hold is read exactly once; at a few tokens, pairs that share an expert
are neighbours in the launch order and share its bytes through L2. The bytes are read as
32-bit words and decoded two codes per shift-and-mask (`_decode_word`); the 32 products of
a block are summed before its power-of-two scale is applied (exact), so a weight costs
about five instructions: its share of the decode, a conversion and a fused multiply-add
(sm_90 SASS of triton 3.9).

The sum over a token's k slots happens in the down launch: each program writes its pair's
weighted slice, and the last of the token's k programs for that slice (`grid_counters`)
adds the k slices in float32 and writes the token's output, rounded once; no sum kernel.

The decode is arithmetic, with no table: a code's three magnitude bits shifted into a
float16's exponent and mantissa give the value times 2 ** -14 (the subnormal 0.5 becomes
a float16 subnormal, which the conversion to float32 keeps exact), and the block's scale,
built as float32 bits, supplies 2 ** (scale - 113).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from max_kernels import grid_counters
from max_kernels.grid_counters import arrive_last, reset
from max_kernels.moe_activation import _gated_activation, _weighted_output
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

# Up to this many tokens `fused_moe_mxfp4` takes this path; above, the tensor-core grouped
# GEMMs (`mxfp4_moe_bench --paths` on an H100 placed the crossover).
GEMV_MAX_TOKENS = 4


@dataclass(frozen=True)
class GemvBlocks:
    """Tiles of the few-token path: per projection, the outputs per program (block_n:
    features for gate/up, whose programs read 2 * block_n interleaved rows; output rows for
    down) and the MXFP4 blocks of K per loop step (block_g: 32 weights, 16 bytes each)."""

    block_n_gate_up: int
    block_g_gate_up: int
    block_n_down: int
    block_g_down: int
    num_warps: int


# The best of `mxfp4_moe_bench --sweep` on one H100 at gpt-oss-20b's sizes (H = I = 2880,
# graphs rotating over four layers' weights). One token, 4 pairs: 44.1 us for 53 MB, 40 %
# of the copy rate (the tiles before, (8, 16, 16, 8) over two warps: ~53 us). Four tokens,
# 16 pairs: 122.8 us, with one warp per program and long down slices.
GEMV_ONE_TOKEN = GemvBlocks(block_n_gate_up=8, block_g_gate_up=8, block_n_down=8, block_g_down=16, num_warps=4)
GEMV_FEW_TOKENS = GemvBlocks(block_n_gate_up=8, block_g_gate_up=8, block_n_down=32, block_g_down=4, num_warps=1)


def pick_gemv_blocks(num_pairs: int) -> GemvBlocks:
    """The tiles for num_pairs routed rows (tokens x k): the one-token tiles up to 8 (the
    geometric middle of the two measured points, 4 and 16 rows), the few-token ones above."""
    return GEMV_ONE_TOKEN if num_pairs <= 8 else GEMV_FEW_TOKENS


def launch_gemv(
    x, gate_up, down, b_gate_up, b_down, ids, weights, h, y, out, top_k, act, alpha, limit, cfg: GemvBlocks,
    sum_slots: bool = True,
) -> bool:  # fmt: skip
    """Runs the two GEMV launches (arguments prepared by `mxfp4_moe._fused_moe_mxfp4`:
    `gate_up` and `down` are (blocks, scales), h [pairs, I] and y [pairs, H] scratch).
    Writes the tokens' outputs to `out` [T, H] and returns True when the down launch summed
    the k slots itself; False when asked not to (`sum_slots`, for comparison) or when it
    could not (no arrival counters at hand: first use inside a graph capture, or too many
    slices), leaving the weighted slots in y."""
    hidden, inter = y.shape[1], h.shape[1]
    num_pairs, num_tokens = ids.numel(), out.shape[0]
    # The packed bytes as little-endian 32-bit words (8 codes each), for `_decode_word`.
    gu_words, dn_words = (blocks.view(torch.int32) for blocks, _ in (gate_up, down))
    gu_scales, dn_scales = gate_up[1], down[1]
    bn1 = min(cfg.block_n_gate_up, triton.next_power_of_2(inter))
    bn2 = min(cfg.block_n_down, triton.next_power_of_2(hidden))
    tiles = triton.cdiv(hidden, bn2)
    counters = grid_counters.counters(x.device, num_tokens * tiles) if sum_slots else None
    fold = counters is not None
    # Loads are prefetched by hand (Triton does not pipeline loads that feed no dot).
    common = dict(
        ROUND_W=x.dtype == torch.float16, ACT=act, K_PAD=triton.next_power_of_2(top_k),
        num_warps=cfg.num_warps, num_stages=1, **pdl_launch(x),
    )  # fmt: skip
    _mxfp4_gemv_kernel[(num_pairs, triton.cdiv(inter, bn1))](
        x, gu_words, gu_scales, b_gate_up if b_gate_up is not None else x, ids, weights, h,
        h, counters if fold else ids, top_k, inter, hidden, x.stride(0), gu_words.stride(0), gu_words.stride(1),
        gu_scales.stride(0), gu_scales.stride(1), b_gate_up.stride(0) if b_gate_up is not None else 0,
        h.stride(0), 0, float(alpha), float(limit), GATED=True, HAS_BIAS=b_gate_up is not None, FOLD_K=False,
        BLOCK_N=bn1, BLOCK_G=min(cfg.block_g_gate_up, triton.next_power_of_2(hidden // 32)), **common,
    )  # fmt: skip
    _mxfp4_gemv_kernel[(num_pairs, tiles)](
        h, dn_words, dn_scales, b_down if b_down is not None else x, ids, weights, y,
        out, counters if fold else ids, top_k, hidden, inter, h.stride(0), dn_words.stride(0), dn_words.stride(1),
        dn_scales.stride(0), dn_scales.stride(1), b_down.stride(0) if b_down is not None else 0,
        y.stride(0), out.stride(0), float(alpha), float(limit), GATED=False, HAS_BIAS=b_down is not None,
        FOLD_K=fold, BLOCK_N=bn2, BLOCK_G=min(cfg.block_g_down, triton.next_power_of_2(inter // 32)), **common,
    )  # fmt: skip
    return fold


@triton.jit
def _decode_word(w):
    """The 8 E2M1 codes of uint32 words w (code e in bits 4e..4e + 3: little-endian bytes,
    low nibble first) as float32 values times 2 ** -14, for e = 0..7.

    As `mxfp4_dequant._decode_codes`, but codes e and e + 4 sit 16 bits apart, so one shift
    and mask of the word moves both into the two float16 halves of a register: about two
    integer operations per weight instead of four when each byte is taken apart. (Helpers
    are written out inline here: under the interpreter each call of a jit function costs
    ~2 ms.)
    """
    p04 = ((w << 9) & 0x0E000E00) | ((w << 12) & 0x80008000)
    p15 = ((w << 5) & 0x0E000E00) | ((w << 8) & 0x80008000)
    p26 = ((w << 1) & 0x0E000E00) | ((w << 4) & 0x80008000)
    p37 = ((w >> 3) & 0x0E000E00) | (w & 0x80008000)
    d0 = (p04 & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d4 = (p04 >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d1 = (p15 & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d5 = (p15 >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d2 = (p26 & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d6 = (p26 >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d3 = (p37 & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    d7 = (p37 >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return d0, d1, d2, d3, d4, d5, d6, d7


@triton.jit
def _group_dots(words, scale, xv, G: tl.constexpr, DT: tl.constexpr, ROUND_W: tl.constexpr):
    """[R, G] float32: for each row r and MXFP4 block g, the dot product of the block's 32
    decoded weights (words [R, G, 4] uint32, scales [R, G]) with xv [G, 32] (float32, the
    block's columns of x).

    Without ROUND_W the 32 products of a block are summed, then scaled by its power of two
    (an exact reordering: one multiply-add per weight). With ROUND_W (float16 x, whose
    range cannot hold every decoded value) each weight is scaled and rounded to DT first,
    as the reference rounds the decoded weight.
    """
    # Column 8 i + e of a block meets code e of the block's word i: x's columns split by e
    # (halving the last dimension three times: e even / odd, then e mod 4, then e // 4).
    x_even, x_odd = tl.split(tl.reshape(xv, (G, 4, 4, 2)))
    x04, x26 = tl.split(tl.reshape(x_even, (G, 4, 2, 2)))
    x15, x37 = tl.split(tl.reshape(x_odd, (G, 4, 2, 2)))
    x0, x4 = tl.split(x04)
    x2, x6 = tl.split(x26)
    x1, x5 = tl.split(x15)
    x3, x7 = tl.split(x37)
    d0, d1, d2, d3, d4, d5, d6, d7 = _decode_word(words)
    # 2 ** (scale - 113) as float32 bits (`_scale_factor`, inline).
    sf = ((scale.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)
    if ROUND_W:
        f = sf[:, :, None]
        d0, d1 = (d0 * f).to(DT).to(tl.float32), (d1 * f).to(DT).to(tl.float32)
        d2, d3 = (d2 * f).to(DT).to(tl.float32), (d3 * f).to(DT).to(tl.float32)
        d4, d5 = (d4 * f).to(DT).to(tl.float32), (d5 * f).to(DT).to(tl.float32)
        d6, d7 = (d6 * f).to(DT).to(tl.float32), (d7 * f).to(DT).to(tl.float32)
    # A chain, not a tree: one fused multiply-add per weight.
    acc = d0 * x0[None, :, :]
    acc += d1 * x1[None, :, :]
    acc += d2 * x2[None, :, :]
    acc += d3 * x3[None, :, :]
    acc += d4 * x4[None, :, :]
    acc += d5 * x5[None, :, :]
    acc += d6 * x6[None, :, :]
    acc += d7 * x7[None, :, :]
    part = tl.sum(acc, axis=2)
    if not ROUND_W:
        part = part * sf
    return part


@triton.jit
def _mxfp4_gemv_kernel(
    x_ptr,
    ww_ptr,
    ws_ptr,
    b_ptr,
    ids_ptr,
    weights_ptr,
    out_ptr,
    sum_ptr,
    counters_ptr,
    top_k,
    N,
    K,
    stride_xt,
    stride_wwe,
    stride_wwr,
    stride_wse,
    stride_wsr,
    stride_be,
    stride_ot,
    stride_st,
    alpha,
    limit,
    GATED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FOLD_K: tl.constexpr,
    ACT: tl.constexpr,
    ROUND_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    K_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One (token, slot) pair's product with its expert's packed weight [N, K], for a slice
    of BLOCK_N outputs. GATED (gate/up): x is the token's row of x, the weight's rows are
    the interleaved gate/up rows of N = I features (2 BLOCK_N rows per slice), the output
    act(gate) * up [I]. Otherwise (down): x is the pair's row of h, the output the expert's
    output times the router weight [H]; with FOLD_K the last of a token's k programs for
    a slice also writes the k slices' sum to the token's row of `sum_ptr`. out's row is
    the pair."""
    # Pairs vary fastest: programs of the same slice run together, so pairs that chose the
    # same expert read its rows while they are in L2.
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    if USE_PDL:
        if GATED:
            # The down kernel that follows starts once every program here is past its wait:
            # the routing it reads before its own wait is then complete.
            gdc_wait()
            gdc_launch_dependents()
        else:
            gdc_launch_dependents()
    ROWS: tl.constexpr = 2 * BLOCK_N if GATED else BLOCK_N  # noqa: N806
    num_rows = 2 * N if GATED else N
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    rows = pid_n * ROWS + tl.arange(0, ROWS)
    r_ok = rows < num_rows
    offs_g = tl.arange(0, BLOCK_G)
    ww = (
        ww_ptr
        + expert * stride_wwe
        + rows.to(tl.int64)[:, None, None] * stride_wwr
        + offs_g[None, :, None] * 4
        + tl.arange(0, 4)[None, None, :]
    )
    ws = ws_ptr + expert * stride_wse + rows.to(tl.int64)[:, None] * stride_wsr + offs_g[None, :]
    x_row = pair // top_k if GATED else pair
    xp = x_ptr + x_row.to(tl.int64) * stride_xt + offs_g[:, None] * 32 + tl.arange(0, 32)[None, :]
    num_groups = K // 32
    g_ok = offs_g < num_groups
    words = tl.load(ww, mask=r_ok[:, None, None] & g_ok[None, :, None], other=0)
    scale = tl.load(ws, mask=r_ok[:, None] & g_ok[None, :], other=0)
    if USE_PDL:
        if not GATED:
            # The first weights (above) stream in while the gate/up kernel finishes; h,
            # its output, only after it has.
            gdc_wait()
    xv = tl.load(xp, mask=g_ok[:, None], other=0.0)
    acc = tl.zeros([ROWS, BLOCK_G], dtype=tl.float32)
    for g0 in range(0, num_groups, BLOCK_G):
        # The next slice is requested before this one is multiplied (nothing past the end).
        g_ok = offs_g < num_groups - (g0 + BLOCK_G)
        xv_next = tl.load(xp + (g0 + BLOCK_G) * 32, mask=g_ok[:, None], other=0.0)
        words_next = tl.load(ww + (g0 + BLOCK_G) * 4, mask=r_ok[:, None, None] & g_ok[None, :, None], other=0)
        scale_next = tl.load(ws + g0 + BLOCK_G, mask=r_ok[:, None] & g_ok[None, :], other=0)
        acc += _group_dots(
            words.to(tl.uint32, bitcast=True), scale, xv.to(tl.float32), BLOCK_G,
            out_ptr.dtype.element_ty, ROUND_W,
        )  # fmt: skip
        xv, words, scale = xv_next, words_next, scale_next
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + expert * stride_be + rows, mask=r_ok, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    out_row = out_ptr + pair.to(tl.int64) * stride_ot
    if GATED:
        gate, up = tl.split(tl.reshape(y, (BLOCK_N, 2)))
        h = _gated_activation(gate, up, dt, ACT, alpha, limit)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(out_row + offs_n, h, mask=offs_n < N)
    else:
        tl.store(out_row + rows, _weighted_output(y, tl.load(weights_ptr + pair), dt), mask=r_ok)
        if FOLD_K:
            # The token's last pair to finish this slice adds the k weighted slices.
            token = pair // top_k
            counter = counters_ptr + token * tl.num_programs(1) + pid_n
            if arrive_last(counter, top_k):
                slots = tl.arange(0, K_PAD)
                parts = tl.load(
                    out_ptr + (token * top_k + slots).to(tl.int64)[:, None] * stride_ot + rows[None, :],
                    mask=(slots < top_k)[:, None] & r_ok[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
                total = tl.sum(parts.to(tl.float32), axis=0)
                tl.store(sum_ptr + token.to(tl.int64) * stride_st + rows, total.to(dt), mask=r_ok)
                reset(counter)


