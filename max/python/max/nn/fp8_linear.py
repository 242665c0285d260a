"""FP8 linear layers (`--quantization fp8`): e4m3 weights with one scale per output channel,
activations quantized per token at run time, as vLLM's dynamic FP8 does for a bfloat16
checkpoint.

`quantize_linears_fp8(network)` swaps, in place, the linear layers of a loaded network's
decoder layers (the `layers` of each `Transformer` in it: q/k/v, o, gate/up, down) for
`Fp8Linear`; the embeddings, the LM head, a
mixture's router and experts, and any vision tower keep their dtype. The arithmetic is in
`max_kernels.fp8`: FP8 tensor cores on GPUs of compute capability 8.9+, an exact float32
emulation elsewhere (slow; it lets the CPU verify what the GPU computes).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from max.errors import MaxError
from max.nn.parallel import RowParallelLinear, TensorParallel, all_reduce
from max.nn.quantized_linear import quantizable_linears
from max.nn.transformer import Transformer
from max_kernels import fp8_linear
from max_kernels.fp8 import quantize_fp8_weight

logger = logging.getLogger("max.nn")

# torch._scaled_mm needs both dimensions of the weight to be multiples of 16.
_ALIGN = 16


def fp8_shape_supported(out_features: int, in_features: int) -> bool:
    """Whether a weight [out, in] can be multiplied in FP8 (both dimensions multiples of 16)."""
    return out_features % _ALIGN == 0 and in_features % _ALIGN == 0


class Fp8Linear(nn.Module):
    """`y = x @ (w_scale * w_q).T + bias` with e4m3 codes w_q kept in memory; the input is
    quantized per row on each call. Under tensor parallelism (`tp` of a row-parallel layer)
    the ranks' partial outputs are summed before the bias is added."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if not fp8_shape_supported(self.out_features, self.in_features):
            raise MaxError(f"an FP8 weight needs both dimensions to be multiples of {_ALIGN}, got {tuple(weight.shape)}")
        codes, scales = quantize_fp8_weight(weight.detach())
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.tp is not None and self.tp.size > 1:
            y = all_reduce(fp8_linear(x2, self.weight, self.weight_scale), self.tp)
            y = y if self.bias is None else y + self.bias
        else:
            y = fp8_linear(x2, self.weight, self.weight_scale, self.bias)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per channel"


def quantize_linears_fp8(network: nn.Module) -> int:
    """Replaces the `nn.Linear` layers inside `network`'s decoder layers by `Fp8Linear`, in
    place; returns how many. A layer whose shape FP8 cannot take stays as it is (logged)."""
    done, kept = 0, []
    decoders = [m.layers for m in network.modules() if isinstance(m, Transformer)]
    with torch.no_grad():
        for layers in decoders:
            for parent, name, path, child in quantizable_linears(layers):
                if not fp8_shape_supported(*child.weight.shape):
                    kept.append(path)
                    continue
                tp = child.tp if isinstance(child, RowParallelLinear) else None
                setattr(parent, name, Fp8Linear(child.weight, child.bias, tp))
                done += 1
    if kept:
        logger.info("fp8: %d linear layers kept in float (shape not a multiple of 16), e.g. %s", len(kept), kept[0])
    logger.info("fp8: %d linear layers quantized to e4m3 with per-channel scales", done)
    return done
