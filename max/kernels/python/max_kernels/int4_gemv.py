"""The int4 weight-only product for decode steps (1 to 16 rows): y = x @ W.T + b with W in
our int4 layout (`max_kernels.int4_layout`).

A decode step reads each weight once, so its time is the weight's bytes over the memory
bandwidth: int4 is a quarter of bfloat16's. For one row, `_int4_gemv_kernel` runs on the
CUDA cores: each program owns BLOCK_N output features and streams their packed rows in
slices of BLOCK_K input features, multiplying the even and odd columns' codes with x's even
and odd columns and applying each group's scale and zero once per group,

    sum_k (q - z) s x = s (sum_k q x - z sum_k x)     (per group),

so the inner loop is one multiply-add per code. For 2 to 16 rows the tile kernel of
`int4_gemm` with a 16-row tile reads the weight once for all of them.

`int4_word_gemv` is the faster CUDA-core kernel beside it (codes read as 32-bit words and
decoded with one bitwise instruction, split-K), `int4_word_tile` its tensor-core sibling.
Which kernel and tiles a product takes comes from one table, `TUNED`, keyed by the weight's
shape and the rows' bucket (filled from `python -m max.benchmark.kernels.int4_gemv_sweep`
on the card), with today's measured tiles as the default elsewhere.

`int4_linear_reference` defines the result; the kernels accumulate in float32 (the factored
sum above differs from the reference by float32 rounding only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from max_kernels.int4_gemm import int4_gemm, sub_block
from max_kernels.int4_layout import check_int4_layout
from max_kernels.int4_word_gemv import int4_word_gemv, word_sub_block
from max_kernels.int4_word_tile import int4_word_tile

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803, N806

# Rows up to which a product is a decode step's (the weight read once for all rows).
GEMV_MAX_ROWS = 16
# Row counts are looked up in `TUNED` by the smallest bucket that holds them.
ROW_BUCKETS = (1, 4, 16)
KERNELS = ("bytes", "words", "tile", "word_tile")


@dataclass(frozen=True)
class Int4GemvConfig:
    """One decode product's kernel and launch: `bytes` (`_int4_gemv_kernel`, one row only),
    `words` (`int4_word_gemv`, 1-16 rows, with split_k and prefetch), `tile` (the tensor-
    core `int4_gemm` with a 16-row tile, using num_stages and factored) or `word_tile`
    (`int4_word_tile`, a 16-row tile on the tensor cores over 32-bit words; 16-bit x only,
    float32 x takes the default rule's kernel); block_n output features and block_k input
    features per program and loop step."""

    kernel: str
    block_n: int
    block_k: int
    num_warps: int = 4
    split_k: int = 1
    prefetch: bool = True
    num_stages: int = 3
    factored: bool = False

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown int4 decode kernel {self.kernel!r} (choose from {', '.join(KERNELS)})")


# Best configuration per (N, K, row bucket) from `int4_gemv_sweep` (groups of 128, PDL on);
# the 1-row entries are from one H100 (2026-12-07, fourth session; `--rows 1 --budget-s 40`). Shapes and buckets not listed take `default_config`'s rule.
TUNED: dict[tuple[int, int, int], Int4GemvConfig] = {
    (6144, 4096, 1): Int4GemvConfig("words", 16, 1024, 4, split_k=1),  # qkv: 8.0 us
    (4096, 4096, 1): Int4GemvConfig("words", 16, 1024, 4, split_k=2),  # o: 6.7 us
    (28672, 4096, 1): Int4GemvConfig("words", 16, 1024, 4, split_k=1),  # gate_up: 29.0 us
    (4096, 14336, 1): Int4GemvConfig("words", 16, 1024, 4, split_k=2),  # down: 16.4 us
    # 2-4 and 5-16 rows (H100, 2026-12-07, `int4_gemv_sweep --rows 4,16 --quick`): 2.6-3.7x
    # the default 16-row tile, except gate_up at 4 rows (1.8x).
    (6144, 4096, 4): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # qkv: 15.0 us
    (6144, 4096, 16): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # qkv: 21.3 us
    (4096, 4096, 4): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # o: 13.7 us
    (4096, 4096, 16): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # o: 19.7 us
    (28672, 4096, 4): Int4GemvConfig("word_tile", 256, 128, 8, split_k=2, num_stages=3),  # gate_up: 52.9 us
    (28672, 4096, 16): Int4GemvConfig("word_tile", 256, 128, 8, split_k=2, num_stages=3),  # gate_up: 68.5 us
    (4096, 14336, 4): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # down: 37.3 us
    (4096, 14336, 16): Int4GemvConfig("word_tile", 128, 128, 4, split_k=8, num_stages=3),  # down: 55.2 us
}


def row_bucket(rows: int) -> int:
    """The `TUNED` bucket of a decode step of `rows` rows (1, up to 4, up to 16)."""
    for bucket in ROW_BUCKETS:
        if rows <= bucket:
            return bucket
    raise ValueError(f"an int4 decode product takes at most {GEMV_MAX_ROWS} rows, got {rows}")


def default_config(n: int, k: int, rows: int, group_size: int = 128) -> Int4GemvConfig:
    """The configuration of an [n, k] product over `rows` rows: the table's, where it has
    one that these groups allow, else the tiles `int4_bench` measured on one H100
    (2026-12-07): the byte kernel with 8 features x 2048 inputs (8 KB of codes a loop
    step, 12-28 % faster than 8 x 512) for one row, the 16-row tile for more."""
    tuned = TUNED.get((n, k, row_bucket(rows)))
    if tuned is not None and config_takes(tuned, k, rows, group_size):
        return tuned
    return _default_rule(k, rows)


def _default_rule(k: int, rows: int) -> Int4GemvConfig:
    if rows == 1:
        return Int4GemvConfig("bytes", 8, min(2048, triton.next_power_of_2(k)))
    return Int4GemvConfig("tile", 32, 128)


def config_takes(config: Int4GemvConfig, k: int, rows: int, group_size: int) -> bool:
    """Whether `config` can run a product of `rows` rows, K = k, in groups of group_size
    (its K slices must line up with the groups; the byte kernel takes one row only)."""
    if config.kernel == "bytes" and rows != 1:
        return False
    if config.kernel == "word_tile":
        block_k = config.block_k
        return k % 8 == 0 and block_k >= 64 and block_k & (block_k - 1) == 0 and group_size % block_k == 0
    try:
        if config.kernel == "words":
            word_sub_block(group_size, config.block_k)
            return k % 8 == 0
        sub = sub_block(group_size, config.block_k)
    except ValueError:
        return False
    return not config.factored or sub == config.block_k  # factored: slices inside one group


def int4_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    config: Int4GemvConfig | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
) -> torch.Tensor:
    """x [M, K] (M <= 16) @ W.T (+ bias) -> [M, N] in x's dtype, by the Triton kernels: the
    given config, or `default_config`'s (a `word_tile` entry serves 16-bit x; float32 x takes
    the default rule). block_n / block_k (older callers, benches) pick the byte kernel's
    tiles for one row and the tile kernel's for more."""
    m, k = x.shape
    if m > GEMV_MAX_ROWS:
        raise ValueError(f"int4_gemv takes at most {GEMV_MAX_ROWS} rows, got {m}")
    n = qweight.shape[0]
    if m == 0:
        return torch.empty((0, n), dtype=x.dtype, device=x.device)
    if config is None:
        config = default_config(n, k, m, group_size)
        if config.kernel == "word_tile" and x.dtype not in (torch.bfloat16, torch.float16):
            config = _default_rule(k, m)
        if block_n is not None or block_k is not None:
            config = _default_rule(k, m)
            config = Int4GemvConfig(config.kernel, block_n or config.block_n, block_k or config.block_k, num_warps)
    if config.kernel == "words":
        return int4_word_gemv(
            x, qweight, scales, zeros, group_size, bias,
            block_n=config.block_n, block_k=config.block_k, split_k=config.split_k,
            num_warps=config.num_warps, prefetch=config.prefetch,
        )  # fmt: skip
    if config.kernel == "word_tile":
        return int4_word_tile(
            x, qweight, scales, zeros, group_size, bias, block_m=16, block_n=config.block_n,
            block_k=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages,
            split_k=config.split_k,
        )  # fmt: skip
    if config.kernel == "tile":
        return int4_gemm(
            x, qweight, scales, zeros, group_size, bias,
            block_m=16, block_n=config.block_n, block_k=config.block_k,
            num_warps=config.num_warps, num_stages=config.num_stages, factored=config.factored,
        )  # fmt: skip
    if m != 1:
        raise ValueError(f"the byte kernel takes one row, got {m}")
    return _int4_byte_gemv(x, qweight, scales, zeros, group_size, bias, config)


def _int4_byte_gemv(x, qweight, scales, zeros, group_size, bias, config: Int4GemvConfig) -> torch.Tensor:
    """One row by `_int4_gemv_kernel` (bytes unpacked into float32 nibbles)."""
    check_int4_layout(qweight, scales, zeros, group_size)
    k = x.shape[1]
    n = qweight.shape[0]
    if 2 * qweight.shape[1] != k:
        raise ValueError(f"x has {k} features, the weight {2 * qweight.shape[1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    block_n, block_k = config.block_n, config.block_k
    _int4_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, qweight, scales, zeros, bias if bias is not None else scales, y,
        n, k, group_size, k // group_size,
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, SUB=sub_block(group_size, block_k),
        num_warps=config.num_warps,
    )  # fmt: skip
    return y


def int4_kernels_take(group_size: int) -> bool:
    """Whether the Triton kernels take this group size: a power of two from 16 (GPTQ's and
    AWQ's 32, 64, 128), or a multiple of 512 (one group per row of a real model's weight),
    so that every K slice they use lines up with the groups. Others run the reference."""
    power_of_two = group_size >= 16 and group_size & (group_size - 1) == 0
    return power_of_two or (group_size > 0 and group_size % 512 == 0)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, n, k, group, n_groups,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB: tl.constexpr,
):  # fmt: skip
    NSUB: tl.constexpr = BLOCK_K // SUB
    HALF: tl.constexpr = SUB // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < n
    k2 = k // 2
    rows = q_ptr + rn[:, None].to(tl.int64) * k2
    acc = tl.zeros([BLOCK_N, NSUB], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        rj = start // 2 + tl.arange(0, BLOCK_K // 2)
        j_ok = rj < k2
        b = tl.load(rows + rj[None, :], mask=n_ok[:, None] & j_ok[None, :], other=0, eviction_policy="evict_first")
        x_even = tl.load(x_ptr + 2 * rj, mask=j_ok, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + 2 * rj + 1, mask=j_ok, other=0.0).to(tl.float32)
        dots = (b & 15).to(tl.float32) * x_even[None, :] + (b >> 4).to(tl.float32) * x_odd[None, :]
        dots = tl.sum(tl.reshape(dots, (BLOCK_N, NSUB, HALF)), axis=2)
        x_sums = tl.sum(tl.reshape(x_even + x_odd, (NSUB, HALF)), axis=1)
        cols = start + tl.arange(0, NSUB) * SUB
        g_ok = n_ok[:, None] & (cols < k)[None, :]
        at = rn[:, None].to(tl.int64) * n_groups + (cols // group)[None, :]
        s = tl.load(s_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + at, mask=g_ok, other=0.0).to(tl.float32)
        acc += s * (dots - z * x_sums[None, :])
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)
