"""int8 weight-only linear layers for GPUs: GGUF files of 5 to 8 bits (Q8_0, Q6_K, Q5_K),
and the wider layers of 4-bit files (a Q4_K_M file's Q6_K layers).

`Int8Linear` holds its weight in our int8 layout (`max_kernels.int8_layout`: int8 codes
[N, K], a float16 scale per row and group of 32 input features) and multiplies through
`max_kernels.int8_linear`: the Triton GEMV / GEMM on CUDA, the exact reference (dequantize,
then the product) elsewhere. A GGUF Q8_0 block is one group, kept code for code; Q6_K and
Q5_K are re-quantized from their decoded values.
"""

from __future__ import annotations

import torch
from torch import nn

from max_kernels import int8_linear
from max_kernels.int8_layout import INT8_GROUP_SIZE, int8_layer_bytes, quantize_int8_groups


class Int8Linear(nn.Module):
    """`y = x @ W.T + bias` with W in the int8 layout (see the module docstring)."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, group_size: int, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size = group_size
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def quantized(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, group_size: int = INT8_GROUP_SIZE
    ) -> Int8Linear:
        """A float weight [N, K] quantized symmetric per group (`quantize_int8_groups`); the
        bias, if any, in the compute dtype `dtype`."""
        codes, scales = quantize_int8_groups(weight.detach(), group_size)
        return cls(codes, scales, group_size, None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = int8_linear(x.reshape(-1, shape[-1]), self.codes, self.scales, self.group_size, self.bias)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 in groups of {self.group_size}"


def int8_linear_bytes(out_features: int, in_features: int, dtype: torch.dtype, bias: bool, group_size: int = INT8_GROUP_SIZE) -> int:
    """Bytes an `Int8Linear` holds: a byte per weight, a float16 scale per group, the bias."""
    elem = torch.empty((), dtype=dtype).element_size()
    return int8_layer_bytes(out_features, in_features, group_size, out_features * elem if bias else 0)
