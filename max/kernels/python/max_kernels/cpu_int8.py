"""int8 weights in groups of 32 times a few rows on x86 CPUs with AVX2: a C kernel of ours
(`cpu_int8.c`).

The weight is symmetric int8 with one float32 scale per output feature and group of 32
input features: GGUF's Q8_0 block, whose codes and scale survive `quantize` exactly (a
Q8_0 tensor decodes to s q with max|q| = 127, and re-quantizing finds the same s and q).
The rows are quantized to int16 per group of 32 as `cpu_int4`'s are (a relative error near
1e-5), and each group's dot product is an integer one. torch's int8 CPU product
(`_weight_int8pack_mm`) has one scale per output feature only, which moves an embedding
table with outlying rows by eight times bfloat16's error; this kernel keeps GGUF's groups.

Built at first use and loaded by `cpu_native`; where it cannot be (no AVX2/FMA, no
compiler), `available()` is False. `int8_q16_reference` computes the same in torch.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from max_kernels import cpu_int4, cpu_native

GROUP = 32


@functools.cache
def _library() -> ctypes.CDLL | None:
    i64, ptr, cint = cpu_native.I64, cpu_native.PTR, cpu_native.INT
    return cpu_native.library("cpu_int8", {"max_int8_matmul": ([ptr, cint, i64, i64, ptr, ptr, i64, ptr, cint], cint)})


def available() -> bool:
    """Whether this CPU and machine run the kernel (AVX2 and FMA, a C compiler, a build)."""
    return _library() is not None


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [N, K], float32 scales [N, K/32]) of a float weight [N, K]: per group of
    32 input features s = max|w| / 127 and q = round(w / s)."""
    n, k = weight.shape
    if k % GROUP:
        raise ValueError(f"cpu_int8 takes K a multiple of {GROUP}, got {k}")
    w = weight.float().reshape(n, k // GROUP, GROUP)
    scales = w.abs().amax(dim=-1) / 127.0
    inv = torch.where(scales != 0, 1.0 / scales, torch.zeros((), dtype=scales.dtype))
    codes = torch.round(w * inv[..., None]).clamp(-127, 127).to(torch.int8)
    return codes.reshape(n, k), scales.contiguous()


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight [N, K] that `quantize`'s output holds."""
    n, k = codes.shape
    return (codes.float().reshape(n, -1, GROUP) * scales[..., None]).reshape(n, k)


def int8_q16_reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """What `int8_matmul` computes, in torch: per group, s d sum(q x16), summed over the
    groups in float32; [M, N] in x's dtype."""
    m, k = x.shape
    x16, d = cpu_int4.quantize_rows_q16(x)
    dots = torch.einsum("mgi,ngi->mng", x16.reshape(m, -1, GROUP).long(), codes.reshape(codes.shape[0], -1, GROUP).long())
    return (scales[None] * d[:, None] * dots.float()).sum(-1).to(x.dtype)


def check_weight(codes: torch.Tensor, scales: torch.Tensor) -> None:
    """Raises ValueError unless codes and scales are a weight as `quantize` makes it."""
    n, k = codes.shape
    if codes.dtype != torch.int8 or scales.dtype != torch.float32 or scales.shape != (n, k // GROUP) or k % GROUP:
        raise ValueError(f"not an int8 weight in groups of {GROUP}: codes {tuple(codes.shape)} {codes.dtype}, scales {tuple(scales.shape)} {scales.dtype}")
    if not (codes.is_contiguous() and scales.is_contiguous()):
        raise ValueError("cpu_int8 reads the weight in place: it must be contiguous")


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, *, weight_checked: bool = False) -> torch.Tensor:
    """x [M, K] (bfloat16 or float32) times the int8 weight [N, K] -> [M, N] in x's dtype,
    by the C kernel on torch's threads (`available()` must be True). A layer that ran
    `check_weight` once passes `weight_checked`."""
    lib = _library()
    if lib is None:
        raise RuntimeError("cpu_int8 is not available on this machine (see cpu_int8.available)")
    if not weight_checked:
        check_weight(codes, scales)
    return cpu_native.rows_times_weight(lib.max_int8_matmul, "cpu_int8", x, codes, scales, codes.shape[0], codes.shape[1])
