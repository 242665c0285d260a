"""The dense linear layer of the decoder: `nn.Linear` whose product the kernel library picks."""

from __future__ import annotations

import torch
from torch import nn

from max_kernels import linear


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same checkpoint names) whose product is
    `max_kernels.linear`: a Triton GEMV for one row on the GPU, `F.linear` otherwise.
    `lora`, when set (`max.nn.lora.attach_lora`), adds the step's adapter products."""

    lora: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lora is None:
            return linear(x, self.weight, self.bias)
        return self.lora(x, self.weight, self.bias)
