"""FP8 pre-quantized checkpoints (compressed-tensors, fbgemm_fp8, transformers' `fp8`): each
quantized layer's e4m3 `weight` and its scales become one `QuantizedWeightTensor`, read as
the exact dequantization codes * scale.

Scales: `weight_scale` per tensor ([] or [1]) or per channel ([N] or [N, 1]), or per block
of `block_size` ([ceil(N/bn), ceil(K/bk)]: compressed-tensors' `weight_scale`, `fp8`'s
`weight_scale_inv`, which despite its name multiplies). Static activation scales
(`input_scale`) are dropped: activations are quantized per token at run time. KV cache
scales (`k_scale`, `v_scale`) go to the FP8 KV cache (`kv_cache_scales`, which takes them
out before this view); any left in a layout it does not map are dropped here.
"""

from __future__ import annotations

import logging

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.quantization_config import CheckpointQuantization
from max.pipelines.lib.weights.quantized_tensor import QuantizedWeightTensor

logger = logging.getLogger("max.pipelines")

_SCALE_SUFFIXES = (".weight_scale", ".weight_scale_inv")
# Static activation scales (we quantize activations per token instead), and KV cache scales
# that `kv_cache_scales` does not map to a layer.
_DROPPED_SUFFIXES = (".input_scale", ".input_scale_ub", ".k_scale", ".v_scale", ".q_scale")


def expand_scales(scales: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], quant: CheckpointQuantization) -> torch.Tensor:
    """float32 scales for the weight's rows [r0, r1) and columns [c0, c1), broadcastable to
    that slice: a scalar, a column [r, 1], or per element for blocks."""
    s = scales.float()
    if quant.strategy == "tensor":
        if s.numel() != 1:
            raise MaxError(f"a per-tensor FP8 scale must have one element, got shape {tuple(s.shape)}")
        return s.reshape(1, 1)
    if quant.strategy == "channel":
        return s.reshape(-1, 1)[rows[0] : rows[1]]
    bn, bk = quant.block_size
    s = s[rows[0] // bn : (rows[1] - 1) // bn + 1, cols[0] // bk : (cols[1] - 1) // bk + 1]
    s = s.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)
    r0, c0 = rows[0] % bn, cols[0] % bk
    return s[r0 : r0 + rows[1] - rows[0], c0 : c0 + cols[1] - cols[0]]


def _check_scale_shape(weight: CheckpointTensor, scale: CheckpointTensor, quant: CheckpointQuantization) -> None:
    n, k = weight.shape
    shape = tuple(scale.shape)
    if quant.strategy == "tensor":
        ok = shape in ((), (1,), (1, 1))
        want = "[] or [1]"
    elif quant.strategy == "channel":
        ok = shape in ((n,), (n, 1))
        want = f"[{n}, 1]"
    else:
        bn, bk = quant.block_size
        want = f"[{-(-n // bn)}, {-(-k // bk)}]"
        ok = shape == (-(-n // bn), -(-k // bk))
    if not ok:
        raise MaxError(
            f"{scale.source}: FP8 scale {scale.name!r} has shape {shape}; the weight {weight.name!r} "
            f"{(n, k)} with {quant.describe()} needs {want}"
        )


def fp8_weight(weight: CheckpointTensor, scale: CheckpointTensor, quant: CheckpointQuantization) -> QuantizedWeightTensor:
    """The dequantized weight of an e4m3 `weight` [N, K] and its `scale`, read lazily (a
    slice of rows reads only those rows' codes)."""
    _check_scale_shape(weight, scale, quant)
    n, k = weight.shape

    def read_slice(dtype: torch.dtype, dim: int, start: int, stop: int) -> torch.Tensor:
        codes = weight.load_slice(torch.float32, dim, start, stop)  # e4m3 -> float32 is exact
        rows, cols = ((start, stop), (0, k)) if dim == 0 else ((0, n), (start, stop))
        return (codes * expand_scales(scale.load(torch.float32), rows, cols, quant)).to(dtype)

    def row_scales() -> torch.Tensor | None:
        if quant.strategy == "block":
            return None
        return expand_scales(scale.load(torch.float32), (0, n), (0, k), quant).expand(n, 1).reshape(n).clone()

    return QuantizedWeightTensor(
        weight.name, (n, k), weight.source,
        read=lambda dtype: read_slice(dtype, 0, 0, n), encoding="fp8", read_slice=read_slice,
        stored_dtype=torch.float8_e4m3fn, fp8_row_scales=row_scales,
    )  # fmt: skip


def dequantize_fp8_checkpoint(checkpoint: Checkpoint, quant: CheckpointQuantization) -> Checkpoint:
    """The checkpoint with every e4m3 weight and its scale replaced by one dequantized
    `QuantizedWeightTensor` under the weight's name; static activation scales dropped;
    other tensors (layers the checkpoint keeps in float) unchanged."""
    out: dict[str, CheckpointTensor] = {}
    dropped = 0
    for name, tensor in checkpoint.items():
        if name.endswith(_DROPPED_SUFFIXES):
            dropped += 1
            continue
        if name.endswith(_SCALE_SUFFIXES) and name.rsplit(".", 1)[0] + ".weight" in checkpoint:
            continue  # read with its weight
        if not (name.endswith(".weight") and tensor.stored_dtype == torch.float8_e4m3fn):
            out[name] = tensor
            continue
        base = name.removesuffix(".weight")
        scale = _scale_of(checkpoint, base)
        if scale is None or len(tensor.shape) != 2:
            raise MaxError(
                f"{tensor.source}: FP8 weight {name!r} {tuple(tensor.shape)} has no "
                f"{base}.weight_scale (or weight_scale_inv) beside it"
            )
        out[name] = fp8_weight(tensor, scale, quant)
    if dropped:
        logger.info("FP8 checkpoint: %d static activation scales ignored (activations are scaled per token)", dropped)
    return out


def _scale_of(checkpoint: Checkpoint, base: str) -> CheckpointTensor | None:
    for suffix in _SCALE_SUFFIXES:
        if base + suffix in checkpoint:
            return checkpoint[base + suffix]
    return None
