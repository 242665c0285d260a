"""Our one int4 weight layout (GPTQ, AWQ and int4 quantized on load all end up in it), and
the torch reference product that defines what the int4 kernels compute.

A weight W [N, K] is held as

- `qweight` uint8 [N, K / 2]: the 4-bit codes of row n, two per byte along K: byte j holds
  the code of column 2j in its low nibble and of column 2j + 1 in its high nibble (a row is
  contiguous, so a kernel streams whole rows as the bfloat16 GEMV does);
- `scales` [N, K / G] and `zeros` [N, K / G] in the compute dtype, one pair per output row
  and group of G consecutive input features: W[n, k] = (code[n, k] - zeros[n, k // G]) *
  scales[n, k // G]. Zeros are in code units (8 for a symmetric checkpoint, any integer in
  [0, 15] for an asymmetric one), so GPTQ's and AWQ's integer zero points are exact.

Checkpoints whose groups are not consecutive columns (GPTQ with `desc_act`) are brought to
this layout by permuting the input features; the layer then permutes x the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_int4_layout(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> None:
    """Raises ValueError unless the tensors make one weight in the layout above."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be uint8 [N, K/2], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group size {group_size} must be even and divide K = {k}")
    expected = (n, k // group_size)
    if tuple(scales.shape) != expected or tuple(zeros.shape) != expected:
        raise ValueError(
            f"scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} must be [N, K/G] = {expected}"
        )


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] of integer codes [N, K] in [0, 15] (column 2j low nibble, 2j + 1 high)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """The codes [N, K] (uint8, in [0, 15]) of a packed qweight [N, K / 2]."""
    return torch.stack((qweight & 0xF, qweight >> 4), dim=-1).reshape(qweight.shape[0], -1)


def dequantize_int4(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The float32 weight [N, K] the layout holds: (code - zero) * scale per group."""
    codes = unpack_int4(qweight).float()
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zeros.float().repeat_interleave(group_size, dim=1)
    return (codes - z) * s


def int4_linear_reference(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype, W dequantized exactly in float32 and
    then cast to x's dtype (for float32 x: the product of the checkpoint's own dequantized
    weights, the verification reference)."""
    w = dequantize_int4(qweight, scales, zeros, group_size).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def int4_codes_of(
    weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The integer codes [N, K] (int32, in [0, 15]) that `weight` [N, K] holds under these
    scales and zeros: round(w / s + z). Exact for a weight dequantized from int4 codes (in
    float32, or any dtype whose rounding is below half a code), so a loader can read a
    checkpoint's dequantized values and get its codes back. A zero scale (an all-zero
    group) gives the zero point's code."""
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zeros.float().repeat_interleave(group_size, dim=1)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    codes = torch.where(s == 0, z, weight.float() / safe + z)
    return torch.round(codes).clamp(0, 15).to(torch.int32)


def quantize_int4_groups(
    weight: torch.Tensor, group_size: int, symmetric: bool = False, integer_zeros: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, scales, zeros) of a float weight [N, K] by round-to-nearest per group
    (min/max asymmetric as GPTQ's `sym=False`, or absmax symmetric with zero 8): what
    `--quantization int4` and random int4 weights use. Scales and zeros are float32.
    `integer_zeros=False` keeps the exact minimum (zero = -min / scale, as GGUF's Q4_1
    blocks store it), so a group that already holds 16 evenly spaced values keeps them."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K = {k}")
    w = weight.float().reshape(n, k // group_size, group_size)
    if symmetric:
        scales = (w.abs().amax(-1) / 7.5).clamp(min=1e-12)
        zeros = torch.full_like(scales, 8.0)
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        if integer_zeros:  # zero must be a code: the range must hold 0
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scales = ((hi - lo) / 15.0).clamp(min=1e-12)
        zeros = -lo / scales
        zeros = torch.round(zeros).clamp(0, 15) if integer_zeros else zeros
    codes = int4_codes_of(weight, scales, zeros, group_size)
    return pack_int4(codes), scales, zeros
