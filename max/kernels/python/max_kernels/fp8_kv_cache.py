"""The FP8 (e4m3) KV cache's storage rule: how keys and values are written and read back.

vLLM's `--kv-cache-dtype fp8` (`fp8_e4m3`): the cache holds float8_e4m3fn codes, one byte
per element, with one float32 scale per tensor (each layer's keys have one, its values
another; 1.0 unless a checkpoint provides them). A value x is stored as

    code = e4m3(clamp(x / scale, -448, 448))    rounded to nearest, ties to even

(448 is e4m3's largest finite value, so nothing saturates to NaN) and read back as
float(code) * scale in float32, then rounded to the compute dtype for the products (exact
when the scale is a power of two, such as 1.0). A cache of any other dtype ignores scales.

`quantize_kv` / `dequantize_kv` are the rule in torch (the references and the CPU path
use them). `quantize_e4m3` / `dequantize_e4m3` are the same rule inside Triton kernels.
They take the cache either as float8e4nv pointers (the hardware conversions of CUDA
capability 8.9+) or as a uint8 view of it (`kernel_view`), for which they encode and
decode the bits with integer arithmetic: on older GPUs, and under Triton's interpreter,
whose float32 -> e4m3 cast (triton 3.9) rounds ties away from zero and flushes subnormals,
where the GPU and torch round to nearest even. Loads of e4m3 through float8e4nv pointers
are exact in the interpreter too, but a uint8 view works the same on triton 3.6 and 3.9.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from max_kernels.backend import interpreting
from max_kernels.fp8 import fp8_supported

# Triton's convention: compile-time constants in kernel signatures are UPPER_CASE.
# ruff: noqa: N803

KV_FP8_DTYPE = torch.float8_e4m3fn
E4M3_MAX = 448.0


def is_fp8(cache: torch.Tensor) -> bool:
    """Whether a KV cache tensor holds e4m3 codes (and so reads its scales)."""
    return cache.dtype == KV_FP8_DTYPE


def quantize_kv(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """e4m3 codes of x: clamp(x / scale, +-448) rounded to nearest even (scale None: 1.0)."""
    xf = x.float()
    if scale is not None:
        xf = xf / scale
    return xf.clamp(-E4M3_MAX, E4M3_MAX).to(KV_FP8_DTYPE)


def dequantize_kv(
    codes: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """float(codes) * scale in float32, then in `dtype` (scale None: 1.0)."""
    x = codes.float()
    if scale is not None:
        x = x * scale
    return x.to(dtype)


def kv_scale(scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A float32 [1] scale on `like`'s device for a kernel to load: `scale`, or 1.0."""
    if scale is None:
        return torch.ones(1, dtype=torch.float32, device=like.device)
    return scale.reshape(1).to(device=like.device, dtype=torch.float32)  # no copy if already so


def kernel_view(cache: torch.Tensor) -> torch.Tensor:
    """The fp8 cache as the kernels take it: itself where Triton converts e4m3 natively
    (CUDA capability 8.9+), else a uint8 view (bit arithmetic instead; see the module)."""
    if interpreting() or not fp8_supported(cache.device):
        return cache.view(torch.uint8)
    return cache


@triton.jit
def _e4m3_bits(x):
    """uint8 e4m3 codes of float32 x with |x| <= 448, rounded to nearest even."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    # Normal codes (|x| >= 2^-6): keep 3 of the 23 mantissa bits, adding just under half
    # of the dropped part plus the kept part's lowest bit (ties to even); a carry moves
    # into the exponent, as it should. Then rebias the exponent from 127 to 7.
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # Subnormal codes are multiples of 2^-9 below 2^-6: adding 2^14, whose float32 ulp is
    # 2^-9, rounds |x| to one (to nearest even); the low bits then hold the multiple.
    sub = ((a.to(tl.float32, bitcast=True) + 16384.0).to(tl.uint32, bitcast=True)) - 0x46800000
    return (tl.where(a < 0x3C800000, sub, normal) | sign).to(tl.uint8)


@triton.jit
def _e4m3_value(codes):
    """float32 values of uint8 e4m3 codes (0x7F and 0xFF are NaN, as on the GPU)."""
    c = codes.to(tl.uint32)
    sign = (c & 0x80) << 24
    exponent = (c >> 3) & 0xF
    mantissa = c & 0x7
    normal = (sign | ((exponent + 120) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
    sub = mantissa.to(tl.float32) * 0.001953125  # 2^-9
    sub = tl.where(sign != 0, -sub, sub)
    x = tl.where(exponent == 0, sub, normal)
    return tl.where((c & 0x7F) == 0x7F, float("nan"), x)


@triton.jit
def quantize_e4m3(x, scale, CODE_DTYPE: tl.constexpr):
    """Codes of float32 x for a cache of element type CODE_DTYPE (float8e4nv, or uint8
    for a `kernel_view`): clamp(x / scale, +-448), rounded to nearest even."""
    # IEEE division, as torch's: Triton's `/` is the GPU's approximate one (2 ulp), which
    # moves values that lie near a rounding boundary of e4m3 to the other code.
    y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
    if CODE_DTYPE == tl.uint8:
        return _e4m3_bits(y)
    else:
        return y.to(tl.float8e4nv)


@triton.jit
def dequantize_e4m3(codes, scale, DTYPE: tl.constexpr):
    """float(codes) * scale in float32, rounded to DTYPE (codes: float8e4nv or uint8)."""
    if codes.dtype == tl.uint8:
        x = _e4m3_value(codes)
    else:
        x = codes.to(tl.float32)
    return (x * scale).to(DTYPE)
