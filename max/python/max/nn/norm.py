"""Normalization layers.

Both norms can fold the residual connection in: `norm(x, residual)` adds `x` to the
residual stream and normalizes the sum, returning both (vLLM's fused add + RMSNorm), so a
decoder block reads and writes its hidden state once per norm instead of twice.
"""

from __future__ import annotations

import torch
from torch import nn

from max_kernels import rms_norm


class RMSNorm(nn.Module):
    """Root-mean-square normalization as Llama computes it.

    The statistic is taken in float32; the normalized activations are cast back to the
    input dtype before the weight multiplies them (this order matters for bfloat16 parity
    with the reference implementation).
    """

    gemma = False

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x); or, with `residual`, (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual=residual, gemma=self.gemma)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: scales by (1 + weight), all in float32, then casts back.

    The weight is stored zero-centred (an all-zero weight is the identity), and unlike
    Llama the multiplication happens before the cast to the input dtype.
    """

    gemma = True

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps)
        self.weight = nn.Parameter(torch.zeros(dim))
