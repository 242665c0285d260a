"""Our int8 weight layout (GGUF files of 5 to 8 bits on a GPU end up in it) and the torch
reference product that defines what the int8 kernels compute.

A weight W [N, K] is held as

- `codes` int8 [N, K], row-major (a row is contiguous, so a kernel streams whole rows);
- `scales` float16 [N, K / G], one per output row and group of G consecutive input
  features: W[n, k] = codes[n, k] * scales[n, k // G]. Symmetric, no zero point.

GGUF's Q8_0 block (32 int8 codes and a float16 scale) is exactly one group of 32, so a Q8_0
file is held code for code; Q6_K and Q5_K blocks are re-quantized from their decoded values
(half an int8 step, about an eighth of a Q6_K step, at most). Float16 scales: Q8_0's own,
and a byte per 16 weights fewer than float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# GGUF's Q8_0 block: the group size that keeps a Q8_0 file's codes.
INT8_GROUP_SIZE = 32
SCALE_DTYPE = torch.float16


def check_int8_layout(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> None:
    """Raises ValueError unless the tensors make one weight in the layout above."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"codes must be int8 [N, K], got {codes.dtype} {tuple(codes.shape)}")
    n, k = codes.shape
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group size {group_size} must divide K = {k}")
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales {tuple(scales.shape)} must be [N, K/G] = {(n, k // group_size)}")


def quantize_int8_groups(weight: torch.Tensor, group_size: int = INT8_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of a float weight [N, K]: symmetric round-to-nearest per group, the
    scale absmax / 127 rounded to float16 first (so the codes are those of the held scale).
    Exact for a weight decoded from Q8_0 blocks aligned with the groups (llama.cpp gives a
    block's largest value the code +-127, so the block's scale comes back)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"group size {group_size} does not divide K = {k}")
    w = weight.float().reshape(n, k // group_size, group_size)
    scales = (w.abs().amax(-1) / 127.0).to(SCALE_DTYPE)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    codes = torch.round(w / safe[:, :, None]).clamp(-127, 127).to(torch.int8)
    return codes.reshape(n, k), scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 weight [N, K] the layout holds: code * scale per group."""
    return codes.float() * scales.float().repeat_interleave(group_size, dim=1)


def int8_linear_reference(
    x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group_size: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype, W dequantized exactly in float32 and
    then cast to x's dtype (for float32 x: the product of the file's decoded weights)."""
    w = dequantize_int8(codes, scales, group_size).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def int8_layer_bytes(out_features: int, in_features: int, group_size: int, bias_bytes: int = 0) -> int:
    """Bytes an int8 weight holds: a byte per weight, a float16 scale per group (and the bias)."""
    groups = in_features // group_size
    return out_features * in_features + 2 * out_features * groups + bias_bytes
