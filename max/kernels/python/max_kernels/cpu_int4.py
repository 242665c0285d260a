"""int4 weights times a few rows on x86 CPUs with AVX2: a C kernel of ours (`cpu_int4.c`).

torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) is fast where it can widen codes
to bfloat16 in registers (AVX512-BF16); with AVX2 alone it computes no faster than a
bfloat16 product reads its weight (issue 29: q4_1 within 8 % of bfloat16, 2-core EPYC,
AVX2 emulated). This kernel does what llama.cpp does for Q4 weights, with wider rows: the
rows are quantized to int16 per group of 32 features (one float scale each; a relative
error near 1e-5), and each group's dot product is an integer one on the AVX2 integer units
(`vpmaddwd`), scaled once per group. int8 rows, as llama.cpp's, were a third faster but
doubled SmolLM2's KL against transformers (0.032 against 0.015) and failed its
verification. The weight is the same int4 format as the int4 path's (groups of 32, a
scale and a zero per group), with the codes in another order and the scales and zeros in
float32 (`pack`): torch's kernel takes them in bfloat16, whose rounding moves all 32
weights of a group together (a GGUF block's float16 scale and minimum keep their bits in
float32).

The C source is built at first use and loaded by `cpu_native` (its OpenMP loop on torch's
own threads). Where there is no compiler, no AVX2/FMA, or the build fails, `available()`
is False and callers keep torch's kernel. `int4_q16_reference` computes the same arithmetic in torch.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from max_kernels import cpu_native

GROUP = 32


@functools.cache
def _library() -> ctypes.CDLL | None:
    i64, ptr, cint = cpu_native.I64, cpu_native.PTR, cpu_native.INT
    return cpu_native.library("cpu_int4", {"max_int4_matmul": ([ptr, cint, i64, i64, ptr, ptr, i64, ptr, cint], cint)})


def available() -> bool:
    """Whether this CPU and machine run the kernel (AVX2 and FMA, a C compiler, a build)."""
    return _library() is not None


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's weight from `quantized_linear.quantize_int4`'s output (codes int [N, K]
    in [0, 15], scales and zeros [K/32, N]): packed codes uint8 [N, K/32, 16] (byte j of a
    group: feature j in the low nibble, j + 16 in the high one) and each feature's scales
    and zeros [N, 2, K/32] in float32."""
    n, k = codes.shape
    if k % GROUP:
        raise ValueError(f"cpu_int4 takes K a multiple of {GROUP}, got {k}")
    q = codes.to(torch.uint8).reshape(n, k // GROUP, GROUP)
    packed = (q[..., :16] | (q[..., 16:] << 4)).contiguous()
    pairs = torch.stack((scales.t(), zeros.t()), dim=1).float().contiguous()
    return packed, pairs


def unpack(packed: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, K] that `pack`'s output holds (scale * (q - 8) + zero)."""
    q = torch.cat((packed & 15, packed >> 4), dim=-1).float()  # [N, G, 32]
    s, z = pairs.float().unbind(1)
    return (s[..., None] * (q - 8) + z[..., None]).reshape(packed.shape[0], -1)


def quantize_rows_q16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int16 codes [M, K], float32 scales [M, K/32]) of rows x, per group of 32 as the
    kernel quantizes them: d = max|x| / 32767, codes round-half-even(x * (1 / d))."""
    m, k = x.shape
    xg = x.float().reshape(m, k // GROUP, GROUP)
    d = xg.abs().amax(dim=-1) / 32767.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros((), dtype=d.dtype))
    return torch.round(xg * inv[..., None]).to(torch.int16).reshape(m, k), d


def int4_q16_reference(x: torch.Tensor, packed: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """What `int4_matmul` computes, in torch: per group, s d sum((q - 8) x16) + z sum(x),
    summed over the groups in float32; [M, N] in x's dtype."""
    m, k = x.shape
    x16, d = quantize_rows_q16(x)
    q = torch.cat((packed & 15, packed >> 4), dim=-1).to(torch.int64) - 8  # [N, G, 32]
    dots = torch.einsum("mgi,ngi->mng", x16.reshape(m, -1, GROUP).to(torch.int64), q).float()  # exact
    s, z = pairs.float().unbind(1)  # [N, G]
    sums = x.float().reshape(m, -1, GROUP).sum(-1)  # [M, G]
    y = (s[None] * d[:, None] * dots).sum(-1) + sums @ z.t()
    return y.to(x.dtype)


def check_weight(packed: torch.Tensor, pairs: torch.Tensor) -> None:
    """Raises ValueError unless `packed` and `pairs` are a weight as `pack` makes it, with
    float32 scales and zeros (what `int4_matmul` takes)."""
    n, groups = packed.shape[0], pairs.shape[-1]
    if pairs.dtype != torch.float32:
        raise ValueError(f"cpu_int4 takes float32 scale/zero pairs, got {pairs.dtype}")
    if packed.dtype != torch.uint8 or packed.shape != (n, groups, 16) or pairs.shape != (n, 2, groups):
        raise ValueError(f"not a packed int4 weight: codes {tuple(packed.shape)} {packed.dtype}, pairs {tuple(pairs.shape)}")
    if not (packed.is_contiguous() and pairs.is_contiguous()):
        raise ValueError("cpu_int4 reads the packed weight in place: it must be contiguous")


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, pairs: torch.Tensor, *, weight_checked: bool = False) -> torch.Tensor:
    """x [M, K] (bfloat16 or float32) times the packed int4 weight [N, K] -> [M, N] in x's
    dtype, by the C kernel on torch's threads (`available()` must be True). For a few rows
    (decode steps): each group of codes is decoded once per four rows. A layer that ran
    `check_weight` on its weight once passes `weight_checked` (a decode step calls this
    hundreds of times; each check costs microseconds)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("cpu_int4 is not available on this machine (see cpu_int4.available)")
    if not weight_checked:
        check_weight(packed, pairs)
    elif pairs.dtype != torch.float32:  # a module moved to another dtype after its check
        raise ValueError(f"cpu_int4 takes float32 scale/zero pairs, got {pairs.dtype}")
    return cpu_native.rows_times_weight(lib.max_int4_matmul, "cpu_int4", x, packed, pairs, packed.shape[0], packed.shape[1] * GROUP)
