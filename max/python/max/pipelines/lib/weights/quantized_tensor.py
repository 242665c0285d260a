"""A linear layer's weight that a pre-quantized checkpoint stores as codes and scales, offered
to the loader as the float weight it stands for.

The loader fills parameters of the model's float layers (and fused q/k/v or gate/up layers
from several checkpoint tensors) by name; a `QuantizedWeightTensor` is read like any float
tensor (its values are the checkpoint's exact dequantization), and it also carries what a
quantized layer needs to get the codes back from those values: the per-row FP8 scales, or
the int4 groups' scales, zeros and column order. The float read is thus both the CPU's
dequantizing path and the input of the GPU's quantized layers (see `quantized_layers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from max.pipelines.lib.weights.checkpoint import CheckpointTensor


@dataclass(frozen=True)
class Int4Groups:
    """The groups of an int4 weight [N, K] as its checkpoint defines them: float32 `scales`
    and `zeros` [N, groups] (zeros in code units), the group of each input column `g_idx`
    [K] (None: column k is in group k // group_size), and `group_size` (K for one group per
    row)."""

    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor | None
    group_size: int


@dataclass(frozen=True)
class QuantizedWeightTensor(CheckpointTensor):
    """A dequantized weight [N, K] (see the module docstring). `fp8_row_scales()`: float32
    [N], the scale of each row's e4m3 codes (None for block scales, which no per-row scale
    reproduces). `int4_groups()`: the int4 layout's groups (read when called), of
    `int4_group_size` input features."""

    fp8_row_scales: Callable[[], torch.Tensor | None] | None = None
    int4_groups: Callable[[], Int4Groups] | None = None
    int4_group_size: int = 0
