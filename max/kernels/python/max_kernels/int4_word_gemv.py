"""The int4 weight-only product for decode steps, read as 32-bit words: y = x @ W.T + b for
x [M, K] (1 to 16 rows) and W in our int4 layout (`max_kernels.int4_layout`).

A decode step only reads its weight, so the product should run at the card's copy rate
(3 TB/s on an H100): about 8 instructions of an SM per byte of codes, 4 per code. The byte
kernel (`int4_gemv`) spends ~8 per code (compiled for sm_90: an integer-to-float conversion
per nibble, a quarter-rate instruction, and a reshape-sum per group); this one ~3.5 in its
loop at one row. It:

- reads the packed bytes as int32 words (the layout's bytes of a row in order, so word j of
  a row holds the codes of columns 8j .. 8j + 7, nibble p at bits 4p; 16-byte loads);
- decodes a nibble with one AND: the word masked to the nibble's four bits, read as a
  float32, is the subnormal q 16^p 2^-149 (no exponent bits; the GPU multiplies
  subnormals at full rate: Triton compiles without flush-to-zero). x is rescaled by
  2^(100 - 4p) once per column (exact: a power of two), so each product is q x 2^-49, a
  normal float32 rounded as q x would be, and the slice's sum is scaled back by 2^49;
- factors each group's scale and zero out of the sum, sum (q - z) s x = s (sum q x -
  z sum x), so the inner loop is one multiply-add per code and row;
- reads bfloat16 x two columns per 32-bit load (one row), without masks where the shape
  divides the tiles;
- can split K over SPLIT_K programs per row tile (more programs for short products on a
  132-SM card): each writes its float32 part, and the last to arrive (`grid_counters`)
  adds them up, so the product stays one launch;
- starts its first weight loads before waiting on the previous kernel (PDL, `max_kernels.pdl`).

`int4_linear_reference` defines the result; the kernel accumulates in float32 (the factored
sum differs from the reference by float32 rounding only; |x| must stay below 2^27).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.grid_counters import arrive_last, counters, reset
from max_kernels.int4_layout import check_int4_layout
from max_kernels.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806

# Rows the kernel takes (one decode step of up to 16 sequences).
WORD_GEMV_MAX_ROWS = 16


def int4_word_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    block_n: int = 16,
    block_k: int = 512,
    split_k: int = 1,
    num_warps: int = 4,
    prefetch: bool = True,
) -> torch.Tensor:
    """x [M, K] (M <= 16) @ W.T (+ bias) -> [M, N] in x's dtype. Each program owns block_n
    output features and 1 / split_k of K, in slices of block_k input features (a power of
    two from 64; a multiple or a divisor of the group size)."""
    check_int4_layout(qweight, scales, zeros, group_size)
    m, k = x.shape
    n = qweight.shape[0]
    if not 1 <= m <= WORD_GEMV_MAX_ROWS:
        raise ValueError(f"int4_word_gemv takes 1 to {WORD_GEMV_MAX_ROWS} rows, got {m}")
    if 2 * qweight.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {2 * qweight.shape[1]}")
    if k % 8 or not qweight.is_contiguous() or qweight.data_ptr() % 4:
        raise ValueError("int4_word_gemv reads the codes as int32 words: K % 8 == 0, contiguous, aligned")
    if block_k < 64 or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a power of two from 64, got {block_k}")
    sub = word_sub_block(group_size, block_k)
    if x.stride(-1) != 1:
        x = x.contiguous()
    k8 = k // 8
    words = block_k // 8
    grid_n = triton.cdiv(n, block_n)
    # Whole slices per split, so every split starts on a group boundary.
    slices = triton.cdiv(k8, words)
    split_k = max(1, min(split_k, slices))
    cnt = counters(x.device, grid_n) if split_k > 1 else None
    if cnt is None:
        split_k = 1
    per_split = triton.cdiv(slices, split_k) * words
    split_k = triton.cdiv(k8, per_split)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    parts = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device) if split_k > 1 else y
    # bfloat16 x is read two columns per 32-bit load (one row: a contiguous [1, K] view).
    x_pairs = x.dtype == torch.bfloat16 and m == 1 and x.data_ptr() % 4 == 0
    _int4_word_gemv_kernel[(grid_n, split_k)](
        x, x[0].view(torch.int32) if x_pairs else x, qweight.view(torch.int32), scales, zeros,
        bias if bias is not None else scales, y, parts, cnt if cnt is not None else y,
        m, n, k8, k // group_size, x.stride(0), per_split,
        GROUP=group_size, HAS_BIAS=bias is not None, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n,
        WORDS=words, SUB_WORDS=sub // 8, SPLIT_K=split_k, PREFETCH=prefetch, X_PAIRS=x_pairs,
        EVEN_K=k8 % words == 0, EVEN_N=n % block_n == 0, num_warps=num_warps, **pdl_launch(x),
    )  # fmt: skip
    return y


def word_sub_block(group_size: int, block_k: int) -> int:
    """Columns of a K slice that share one scale: the group, or the whole slice when the
    group is longer; one must divide the other, and a sub-block is whole words."""
    if block_k % group_size == 0 and group_size % 8 == 0:
        return group_size
    if group_size % block_k == 0:
        return block_k
    raise ValueError(f"a K slice of {block_k} and groups of {group_size}: no whole-word sub-block")


@triton.jit
def _load_words(rows, cols, w_hi, n_ok, EVEN: tl.constexpr):
    """Packed words [BLOCK_N, WORDS] of the rows at word columns `cols` (zeros past w_hi and
    past N; EVEN: neither can happen, no masks); read once, so marked evict-first (x and the
    activations stay in L2)."""
    at = rows[:, None] + cols[None, :]
    if EVEN:
        return tl.load(at, eviction_policy="evict_first")
    mask = n_ok[:, None] & (cols < w_hi)[None, :]
    return tl.load(at, mask=mask, other=0, eviction_policy="evict_first")


# x is scaled by 2^(100 - 4p) for nibble p (exact: a power of two, and |x| < 2^27 stays
# finite), so every product q 2^(4p - 149) x 2^(100 - 4p) = q x 2^-49 is a normal float32;
# the slice's sums are scaled back by 2^49.
X_SCALE = tl.constexpr(2.0**100)
DOT_SCALE = tl.constexpr(2.0**49)


@triton.jit
def _nibble_denormal(words, P: tl.constexpr):
    """q 2^(4P - 149) as float32 for the nibble at bits 4P of each word (P < 4): the masked
    word read as a float32 is a subnormal whose significand is q 16^P (no exponent bits),
    so one bitwise AND decodes it (the GPU multiplies subnormals at full rate, no flush)."""
    return (words & (15 << (4 * P))).to(tl.float32, bitcast=True)


@triton.jit
def _group_scaled(s_ptr, z_ptr, rn, n_ok, w0, n_groups, GROUP: tl.constexpr, NSUB: tl.constexpr,
                  SUB_WORDS: tl.constexpr):  # fmt: skip
    """Scale and zero of the groups [BLOCK_N, NSUB] of the slice from word column w0."""
    g = (w0 + tl.arange(0, NSUB) * SUB_WORDS) * 8 // GROUP
    g_ok = n_ok[:, None] & (g < n_groups)[None, :]
    at = rn[:, None].to(tl.int64) * n_groups + g[None, :]
    s = tl.load(s_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def _x_pair(x_ptr, x32_ptr, cols, j_ok, P: tl.constexpr, X_PAIRS: tl.constexpr, EVEN_K: tl.constexpr):
    """x at columns 8 cols + P and 8 cols + P + 1 (P even) as float32. X_PAIRS (bfloat16 x):
    one 32-bit load per pair, each half widened by a shift or a mask (bfloat16 is the top
    half of a float32)."""
    if X_PAIRS:
        at = x32_ptr + 4 * cols + P // 2
        if EVEN_K:
            v = tl.load(at)
        else:
            v = tl.load(at, mask=j_ok, other=0)
        return (v << 16).to(tl.float32, bitcast=True), (v & -65536).to(tl.float32, bitcast=True)
    if EVEN_K:
        a = tl.load(x_ptr + 8 * cols + P)
        b = tl.load(x_ptr + 8 * cols + (P + 1))
    else:
        a = tl.load(x_ptr + 8 * cols + P, mask=j_ok, other=0.0)
        b = tl.load(x_ptr + 8 * cols + (P + 1), mask=j_ok, other=0.0)
    return a.to(tl.float32), b.to(tl.float32)


@triton.jit
def _slice_product_one_row(
    words, x_ptr, x32_ptr, s_ptr, z_ptr, rn, n_ok, w0, w_hi, n_groups,
    GROUP: tl.constexpr, WORDS: tl.constexpr, SUB_WORDS: tl.constexpr, X_PAIRS: tl.constexpr,
    EVEN_K: tl.constexpr,
):  # fmt: skip
    """float32 [BLOCK_N]: one row of x times one K slice (words [BLOCK_N, WORDS] from word
    column w0), each group's scale and zero applied once."""
    NSUB: tl.constexpr = WORDS // SUB_WORDS
    cols = w0 + tl.arange(0, WORDS)
    j_ok = cols < w_hi
    high = words.to(tl.uint32, bitcast=True) >> 16  # nibbles 4..7 to the low half word
    dots = tl.zeros(words.shape, dtype=tl.float32)
    x_sum = tl.zeros([WORDS], dtype=tl.float32)
    x_scale = X_SCALE
    for i in tl.static_range(2):  # nibbles 2i, 2i + 1 of both half words
        xa, xb = _x_pair(x_ptr, x32_ptr, cols, j_ok, 2 * i, X_PAIRS, EVEN_K)
        xc, xd = _x_pair(x_ptr, x32_ptr, cols, j_ok, 2 * i + 4, X_PAIRS, EVEN_K)
        x_sum += (xa + xb) + (xc + xd)
        dots += _nibble_denormal(words, 2 * i) * (xa * x_scale)[None, :]
        dots += _nibble_denormal(high, 2 * i) * (xc * x_scale)[None, :]
        dots += _nibble_denormal(words, 2 * i + 1) * (xb * (x_scale * 0.0625))[None, :]
        dots += _nibble_denormal(high, 2 * i + 1) * (xd * (x_scale * 0.0625))[None, :]
        x_scale = x_scale * 0.00390625
    if NSUB == 1:
        s, z = _group_scaled(s_ptr, z_ptr, rn, n_ok, w0, n_groups, GROUP, NSUB, SUB_WORDS)
        s, z = tl.sum(s, axis=1), tl.sum(z, axis=1)  # [BLOCK_N, 1] -> [BLOCK_N]
        return s * (tl.sum(dots, axis=1) * DOT_SCALE - z * tl.sum(x_sum, axis=0))
    dot_g = tl.sum(tl.reshape(dots, (words.shape[0], NSUB, SUB_WORDS)), axis=2) * DOT_SCALE
    x_g = tl.sum(tl.reshape(x_sum, (NSUB, SUB_WORDS)), axis=1)
    s, z = _group_scaled(s_ptr, z_ptr, rn, n_ok, w0, n_groups, GROUP, NSUB, SUB_WORDS)
    return tl.sum(s * (dot_g - z * x_g[None, :]), axis=1)


@triton.jit
def _slice_product(
    words, x_ptr, s_ptr, z_ptr, rm, m_ok, rn, n_ok, w0, w_hi, sx, n_groups,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WORDS: tl.constexpr,
    SUB_WORDS: tl.constexpr,
):  # fmt: skip
    """float32 [BLOCK_M, BLOCK_N]: x's rows times one K slice of the weight (words [BLOCK_N,
    WORDS] from word column w0), each group's scale and zero applied once."""
    NSUB: tl.constexpr = WORDS // SUB_WORDS
    cols = w0 + tl.arange(0, WORDS)
    j_ok = cols < w_hi
    x_at = x_ptr + rm[:, None].to(tl.int64) * sx + 8 * cols[None, :]
    x_mask = m_ok[:, None] & j_ok[None, :]
    high = words.to(tl.uint32, bitcast=True) >> 16  # nibbles 4..7 to the low half word
    dots = tl.zeros([BLOCK_M, BLOCK_N, WORDS], dtype=tl.float32)
    x_sum = tl.zeros([BLOCK_M, WORDS], dtype=tl.float32)
    x_scale = X_SCALE
    for p in tl.static_range(4):
        x_lo = tl.load(x_at + p, mask=x_mask, other=0.0).to(tl.float32)
        x_hi = tl.load(x_at + (p + 4), mask=x_mask, other=0.0).to(tl.float32)
        x_sum += x_lo + x_hi
        dots += _nibble_denormal(words, p)[None, :, :] * (x_lo * x_scale)[:, None, :]
        dots += _nibble_denormal(high, p)[None, :, :] * (x_hi * x_scale)[:, None, :]
        x_scale = x_scale * 0.0625
    # Group sums, then the group's scale and zero: s (sum q x - z sum x).
    if NSUB == 1:
        dot_g = tl.sum(dots, axis=2)[:, :, None] * DOT_SCALE
        x_g = tl.sum(x_sum, axis=1)[:, None]
    else:
        dot_g = tl.sum(tl.reshape(dots, (BLOCK_M, BLOCK_N, NSUB, SUB_WORDS)), axis=3) * DOT_SCALE
        x_g = tl.sum(tl.reshape(x_sum, (BLOCK_M, NSUB, SUB_WORDS)), axis=2)
    s, z = _group_scaled(s_ptr, z_ptr, rn, n_ok, w0, n_groups, GROUP, NSUB, SUB_WORDS)
    return tl.sum(s[None, :, :] * (dot_g - z[None, :, :] * x_g[:, None, :]), axis=2)


@triton.jit
def _int4_word_gemv_kernel(
    x_ptr, x32_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, part_ptr, cnt_ptr,
    m, n, k8, n_groups, sx, per_split,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WORDS: tl.constexpr, SUB_WORDS: tl.constexpr, SPLIT_K: tl.constexpr, PREFETCH: tl.constexpr,
    X_PAIRS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < m
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    rows = w_ptr + rn.to(tl.int64) * k8
    rj = tl.arange(0, WORDS)
    EVEN: tl.constexpr = EVEN_K and EVEN_N
    w_lo = pid_k * per_split
    w_hi = tl.minimum(w_lo + per_split, k8)
    if USE_PDL:
        gdc_launch_dependents()
    # The weight does not depend on the previous kernel: its first slice is requested
    # before the wait, so it streams in while that kernel finishes.
    words = _load_words(rows, w_lo + rj, w_hi, n_ok, EVEN)
    if USE_PDL:
        gdc_wait()
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for w0 in range(w_lo, w_hi, WORDS):
        if PREFETCH:  # the next slice in flight while this one is multiplied
            ahead = _load_words(rows, w0 + WORDS + rj, w_hi, n_ok, False)
        if BLOCK_M == 1:  # 2-D tiles: no layout changes between the loads and the sums
            acc += _slice_product_one_row(
                words, x_ptr, x32_ptr, s_ptr, z_ptr, rn, n_ok, w0, w_hi, n_groups,
                GROUP, WORDS, SUB_WORDS, X_PAIRS, EVEN_K,
            )[None, :]  # fmt: skip
        else:
            acc += _slice_product(
                words, x_ptr, s_ptr, z_ptr, rm, m_ok, rn, n_ok, w0, w_hi, sx, n_groups,
                GROUP, BLOCK_M, BLOCK_N, WORDS, SUB_WORDS,
            )  # fmt: skip
        if PREFETCH:
            words = ahead
        else:
            words = _load_words(rows, w0 + WORDS + rj, w_hi, n_ok, False)
    out = rm[:, None] * n + rn[None, :]
    finish_split_k(acc, part_ptr, cnt_ptr + pid_n, b_ptr, y_ptr, pid_k, m * n, rn, n_ok, out,
                   m_ok[:, None] & n_ok[None, :], HAS_BIAS, SPLIT_K)  # fmt: skip


@triton.jit
def finish_split_k(acc, part_ptr, counter_ptr, b_ptr, y_ptr, pid_k, part_size, rn, n_ok, out, out_ok,
                   HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):  # fmt: skip
    """Stores y = acc (+ bias) in y's dtype at offsets `out` of a contiguous y; with SPLIT_K
    splits, each stores its float32 part (part_ptr [SPLIT_K, part_size]) and the last of the
    tile's splits to arrive at `counter_ptr` (`grid_counters`) adds them up and stores y."""
    if SPLIT_K > 1:
        tl.store(part_ptr + pid_k * part_size + out, acc, mask=out_ok)
        if arrive_last(counter_ptr, SPLIT_K):
            acc = tl.zeros(acc.shape, dtype=tl.float32)
            for i in range(SPLIT_K):
                acc += tl.load(part_ptr + i * part_size + out, mask=out_ok, other=0.0, cache_modifier=".cg")
            _store_rows(acc, b_ptr, y_ptr, rn, n_ok, out, out_ok, HAS_BIAS)
            reset(counter_ptr)
    else:
        _store_rows(acc, b_ptr, y_ptr, rn, n_ok, out, out_ok, HAS_BIAS)


@triton.jit
def _store_rows(acc, b_ptr, y_ptr, rn, n_ok, out, out_ok, HAS_BIAS: tl.constexpr):
    """y = acc (+ bias), rounded once to y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
