"""int4 weight-only linear layers: GPTQ and AWQ checkpoints, and `--quantization int4`.

`Int4Linear` holds its weight in our one int4 layout (`max_kernels.int4_layout`: packed
codes [N, K/2], a scale and a zero point per row and group of input features) and
multiplies through `max_kernels.int4_linear`: the Triton GEMV / GEMM on CUDA, the exact
reference (dequantize, then the product) elsewhere. A checkpoint whose groups are not
consecutive input features (GPTQ's `desc_act`) is held with its columns permuted into group
order; the layer permutes x the same way (`perm`), which leaves the product unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from max.errors import MaxError
from max_kernels import int4_linear
from max_kernels.int4_layout import int4_codes_of, pack_int4, quantize_int4_groups

# `--quantization int4` (and random int4 weights): GPTQ's most common group size.
DEFAULT_GROUP_SIZE = 128


class Int4Linear(nn.Module):
    """`y = x @ W.T + bias` with W in the int4 layout (see the module docstring)."""

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
        perm: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape[0], 2 * qweight.shape[1]
        self.group_size = group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)
        self.register_buffer("perm", perm)

    @classmethod
    def from_dequantized(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        group_size: int,
        g_idx: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> Int4Linear:
        """The layer holding a checkpoint's int4 weight, from its exact dequantization
        `weight` [N, K] (float32) and its groups: scales and zeros [N, groups], `g_idx` [K]
        the group of each column (None: column k in group k // group_size). The codes are
        recovered exactly; scales and zeros are held in `dtype`."""
        n, k = weight.shape
        perm = None
        if g_idx is not None:
            perm = torch.argsort(g_idx.cpu(), stable=True)
            if not torch.equal(g_idx.cpu()[perm], torch.arange(k) // group_size):
                raise MaxError(
                    f"an int4 weight [{n}, {k}] whose g_idx does not put {group_size} columns in each group"
                )
            weight = weight[:, perm.to(weight.device)]
        codes = int4_codes_of(weight, scales.to(weight.device), zeros.to(weight.device), group_size)
        device = weight.device
        return cls(
            pack_int4(codes),
            scales.to(device=device, dtype=dtype),
            zeros.to(device=device, dtype=dtype),
            group_size,
            None if bias is None else bias.detach().to(dtype),
            None if perm is None else perm.to(device),
        )

    @classmethod
    def quantized(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        group_size: int = DEFAULT_GROUP_SIZE,
        integer_zeros: bool = True,
    ) -> Int4Linear:
        """A float weight quantized to int4 by round-to-nearest per group, asymmetric (what
        `--quantization int4`, random int4 weights and GGUF 4-bit files on a GPU use; the
        latter with the groups' exact minimum as zero: `quantize_int4_groups`)."""
        qweight, scales, zeros = quantize_int4_groups(weight.detach(), group_size, integer_zeros=integer_zeros)
        return cls(qweight, scales.to(dtype), zeros.to(dtype), group_size, None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        x2 = x2.to(self.scales.dtype)
        y = int4_linear(x2, self.qweight, self.scales, self.zeros, self.group_size, self.bias)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        order = ", act-order" if self.perm is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 in groups of {self.group_size}{order}"


def int4_layer_bytes(out_features: int, in_features: int, group_size: int, dtype: torch.dtype, bias: bool) -> int:
    """Bytes an `Int4Linear` holds: half a byte per weight, a scale and a zero per group, the bias."""
    elem = torch.empty((), dtype=dtype).element_size()
    groups = in_features // group_size
    return out_features * in_features // 2 + 2 * out_features * groups * elem + (out_features * elem if bias else 0)
