"""A CPU linear layer with int8 weights and int8 activations quantized on the fly (W8A8).

torch's weight-only int8 kernel (`_weight_int8pack_mm`, max.nn.quantized_linear) widens
each weight to bfloat16 and multiplies in floating point: fast where the CPU has AVX-512,
a vector loop no faster than bfloat16 where it has only AVX2. fbgemm (torch's x86
quantized backend) multiplies int8 by int8 with AVX2's integer dot products instead:
the activations are quantized per call (asymmetric, one scale per call: per token at
batch 1), the weights per output channel, and the product is rescaled to float32 inside
the same kernel. It reads the same one byte per weight; its extra error is the
activations' rounding to 8 bits, one scale per token (7 bits: `reduce_range`, below).

Measured on SmolLM2-135M against float32 (BENCHMARKS.md, issue 29): 41 % teacher-forced
top-1 agreement, KL 1.5: the few outlier channels of an LLM's activations set the scale
and the other channels lose their bits. So `auto` never takes it (the probe of
max.nn.cpu_weight_paths has outlier channels and rejects it); it stays reachable with
`--quantization int8_dynamic` for models whose activations suit it, and as the fast
integer kernel a finer activation scheme (per-channel smoothing, as SmoothQuant does) could
build on.

The layer keeps the network's compute dtype at its edges (it takes and returns bfloat16
in a bfloat16 network), so it replaces a weight-only int8 layer one for one.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def int8_dynamic_supported() -> bool:
    """Whether this torch has fbgemm's dynamic int8 linear (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def _prepack(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fbgemm's packed weight, the per-channel scales) of a float weight [N, K]."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero_points = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # Quantized tensors are deprecated as a user API; fbgemm's prepack still takes one.
        warnings.simplefilter("ignore")
        codes = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(codes, None if bias is None else bias.detach().float())
    return packed, scales.float()


class Int8DynamicLinear(nn.Module):
    """`y = x @ W.T + bias` with W held in int8 per output channel (fbgemm's packed layout)
    and x quantized to int8 on each call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        if not int8_dynamic_supported():
            raise RuntimeError("this torch build has no fbgemm engine (dynamic int8 linear)")
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        # An opaque packed object, not a tensor: held as a plain attribute (it is not
        # saved in a state dict; the layer is rebuilt from float weights on load).
        self.packed, _ = _prepack(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()
        # reduce_range=True keeps fbgemm's 16-bit intermediate sums from saturating on
        # AVX2 (vpmaddubsw adds pairs of u8*s8 products into int16).
        y = torch.ops.quantized.linear_dynamic(x2, self.packed, True)
        return y.to(self.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations (fbgemm)"
