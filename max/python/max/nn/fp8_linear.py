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
from collections.abc import Callable

import torch
from torch import nn

from max.errors import MaxError
from max.nn.parallel import RowParallelLinear, TensorParallel, all_reduce
from max.nn.quantized_linear import quantizable_linears, replace_layers
from max.nn.transformer import Transformer
from max_kernels import fp8_linear
from max_kernels.fp8 import FP8_DTYPE, FP8_MAX, quantize_fp8_weight

logger = logging.getLogger("max.nn")

# torch._scaled_mm needs both dimensions of the weight to be multiples of 16.
_ALIGN = 16


def fp8_shape_supported(out_features: int, in_features: int) -> bool:
    """Whether a weight [out, in] can be multiplied in FP8 (both dimensions multiples of 16)."""
    return out_features % _ALIGN == 0 and in_features % _ALIGN == 0


class Fp8Linear(nn.Module):
    """`y = x @ (w_scale * w_q).T + bias` with e4m3 codes w_q kept in memory; the input is
    quantized per row on each call. `scales` (float32 [N]): the per-row scales of a
    pre-quantized checkpoint whose dequantized values `weight` holds, whose codes are then
    kept exactly (else the weight is quantized per row). Under tensor parallelism (`tp` of
    a row-parallel layer) the ranks' partial outputs are summed before the bias is added."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tp: TensorParallel | None = None,
        scales: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if not fp8_shape_supported(self.out_features, self.in_features):
            raise MaxError(f"an FP8 weight needs both dimensions to be multiples of {_ALIGN}, got {tuple(weight.shape)}")
        if scales is None:
            codes, scales = quantize_fp8_weight(weight.detach())
        else:
            codes, scales = fp8_codes_of(weight.detach(), scales)
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


def fp8_codes_of(weight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes, float32 scales [N]) of a weight an FP8 checkpoint dequantized with these
    per-row scales: w / scale rounds back to the checkpoint's own codes (the dequantized
    value's rounding error is far below half an e4m3 step)."""
    scales = scales.to(device=weight.device, dtype=torch.float32)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    codes = (weight.float() / safe[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return codes, scales


def fp8_replacements(network: nn.Module) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """For every `nn.Linear` inside `network`'s decoder layers whose shape FP8 takes, by
    module path, the function that turns the loaded layer into an `Fp8Linear`. Works on a
    network built on the meta device, so a loader can quantize each layer as soon as its
    weights are in. Layers of other shapes stay as they are (logged)."""
    out: dict[str, Callable[[nn.Module], nn.Module]] = {}
    kept = []
    for prefix, module in network.named_modules():
        if not isinstance(module, Transformer):
            continue
        root = f"{prefix}.layers." if prefix else "layers."
        for _, _, path, child in quantizable_linears(module.layers):
            if fp8_shape_supported(*child.weight.shape):
                out[root + path] = _to_fp8
            else:
                kept.append(root + path)
    if kept:
        logger.info("fp8: %d linear layers kept in float (shape not a multiple of 16), e.g. %s", len(kept), kept[0])
    logger.info("fp8: %d linear layers quantized to e4m3 with per-channel scales", len(out))
    return out


def fp8_layer_bytes(layer: nn.Module, dtype: torch.dtype) -> int:
    """Bytes the `Fp8Linear` made from `layer` holds: one per weight, a float32 scale per
    output channel, and the bias in `dtype`."""
    out_features, in_features = layer.weight.shape
    bias = 0 if layer.bias is None else out_features * torch.empty((), dtype=dtype).element_size()
    return out_features * in_features + 4 * out_features + bias


def _to_fp8(layer: nn.Module) -> Fp8Linear:
    """The FP8 version of a loaded linear layer (a row-parallel one keeps its group)."""
    tp = layer.tp if isinstance(layer, RowParallelLinear) else None
    return Fp8Linear(layer.weight, layer.bias, tp)


def quantize_linears_fp8(network: nn.Module) -> int:
    """Replaces the `nn.Linear` layers inside a loaded `network`'s decoder layers by
    `Fp8Linear`, in place; returns how many (see `fp8_replacements`)."""
    return replace_layers(network, fp8_replacements(network))
