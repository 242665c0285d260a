"""Normalization layers."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalization as Llama computes it.

    The statistic is taken in float32; the normalized activations are cast back to the
    input dtype before the weight multiplies them (this order matters for bfloat16 parity
    with the reference implementation).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: scales by (1 + weight), all in float32, then casts back.

    The weight is stored zero-centred (an all-zero weight is the identity), and unlike
    Llama the multiplication happens before the cast to the input dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)
