"""int4 pre-quantized checkpoints (GPTQ, AWQ's GEMM layout): each quantized layer's packed
tensors become one `QuantizedWeightTensor`, read as the exact dequantization
(code - zero) * scale, and carrying the groups (`Int4Groups`) from which the int4 layer
gets the codes back in our layout (`max_kernels.int4_layout`).

GPTQ (AutoGPTQ / GPTQModel), for a weight W [N, K] and G input features per group:
- `qweight` int32 [K / 8, N]: eight 4-bit codes along the input dimension, column k = 8i + j
  in bits 4j..4j+3 of row i;
- `qzeros` int32 [K / G, N / 8]: the zero points packed along the output dimension the same
  way; the `gptq` (v1) format stores zero - 1, `gptq_v2` the zero itself;
- `scales` [K / G, N]; `g_idx` int32 [K]: the group of each input column (with `desc_act`
  the columns were quantized in order of importance, so groups are not consecutive).

AWQ (AutoAWQ, `version: gemm`): `qweight` int32 [K, N / 8] and `qzeros` int32 [K / G, N / 8]
packed along the output dimension with the eight outputs 8c + [0, 2, 4, 6, 1, 3, 5, 7] in
bits 0, 4, ..., 28 of column c; `scales` [K / G, N]; zeros stored as they are.
"""

from __future__ import annotations

import torch

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.quantization_config import CheckpointQuantization
from max.pipelines.lib.weights.quantized_tensor import Int4Groups, QuantizedWeightTensor

# AWQ's order of the eight outputs in an int32 (nibble i holds output 8c + AWQ_ORDER[i]).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)
_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] with eight nibbles per value along dim 0 -> codes [8R, C] (nibble j of
    row i is row 8i + j)."""
    nibbles = (packed[:, None, :] >> _SHIFTS[None, :, None]) & 0xF
    return nibbles.reshape(-1, packed.shape[1])


def unpack_columns(packed: torch.Tensor, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 [R, C] with eight nibbles per value along dim 1 -> codes [R, 8C]: nibble i of
    column c is column 8c + i, or 8c + order[i] with an interleaving `order` (AWQ's)."""
    nibbles = (packed[:, :, None] >> _SHIFTS[None, None, :]) & 0xF
    if order is not None:
        inverse = [order.index(j) for j in range(8)]
        nibbles = nibbles[:, :, inverse]
    return nibbles.reshape(packed.shape[0], -1)


def int4_groups(parts: dict[str, torch.Tensor], quant: CheckpointQuantization, k: int) -> Int4Groups:
    """The groups (scales, zeros [N, groups] float32; g_idx) of a GPTQ or AWQ layer's
    tensors (`qzeros` int32, `scales`, `g_idx` if any)."""
    awq = quant.format == "awq"
    zeros = unpack_columns(parts["qzeros"], AWQ_ORDER if awq else None).float() + quant.zero_offset
    scales = parts["scales"].float()
    group = quant.group_size or k
    g_idx = parts.get("g_idx")
    if g_idx is not None:
        g_idx = g_idx.long()
        if torch.equal(g_idx, torch.arange(k) // group):
            g_idx = None  # the columns are in group order: no permutation
    return Int4Groups(scales.t().contiguous(), zeros.t().contiguous(), g_idx, group)


def dequantize_int4_parts(parts: dict[str, torch.Tensor], quant: CheckpointQuantization) -> torch.Tensor:
    """The float32 weight [N, K] of a GPTQ or AWQ layer's tensors."""
    if quant.format == "awq":
        codes = unpack_columns(parts["qweight"], AWQ_ORDER)  # [K, N]
    else:
        codes = unpack_rows(parts["qweight"])  # [K, N]
    k = codes.shape[0]
    groups = int4_groups(parts, quant, k)
    g = groups.g_idx if groups.g_idx is not None else torch.arange(k) // groups.group_size
    return ((codes.t().float() - groups.zeros[:, g]) * groups.scales[:, g]).contiguous()


def _shapes(base: str, tensors: dict[str, CheckpointTensor], quant: CheckpointQuantization) -> tuple[int, int]:
    """(N, K) of a layer, after checking its tensors' shapes agree with the format."""
    qweight = tensors["qweight"]
    if quant.format == "awq":
        k, n = qweight.shape[0], 8 * qweight.shape[1]
    else:
        k, n = 8 * qweight.shape[0], qweight.shape[1]
    groups = k // (quant.group_size or k)
    want = {"qzeros": (groups, n // 8), "scales": (groups, n)}
    if "g_idx" in tensors:
        want["g_idx"] = (k,)
    for part, shape in want.items():
        if tuple(tensors[part].shape) != shape:
            raise MaxError(
                f"{tensors[part].source}: {quant.format} tensor {base}.{part} has shape {tuple(tensors[part].shape)}, "
                f"expected {shape} for a weight [{n}, {k}] in groups of {quant.group_size or k}"
            )
    if k % (quant.group_size or k):
        raise MaxError(f"{qweight.source}: {base}: {k} input features are not whole groups of {quant.group_size}")
    return n, k


def int4_weight(base: str, tensors: dict[str, CheckpointTensor], quant: CheckpointQuantization) -> QuantizedWeightTensor:
    """The dequantized weight `base.weight` of a layer's GPTQ / AWQ tensors, read lazily."""
    n, k = _shapes(base, tensors, quant)

    def load_parts(*skip: str) -> dict[str, torch.Tensor]:
        return {
            part: t.load(torch.float32 if part == "scales" else torch.int32)
            for part, t in tensors.items() if part not in skip
        }  # fmt: skip

    def read(dtype: torch.dtype) -> torch.Tensor:
        return dequantize_int4_parts(load_parts(), quant).to(dtype)

    return QuantizedWeightTensor(
        f"{base}.qweight", (n, k), tensors["qweight"].source, read, encoding=quant.format,
        int4_groups=lambda: int4_groups(load_parts("qweight"), quant, k), int4_group_size=quant.group_size or k,
    )  # fmt: skip


def dequantize_int4_checkpoint(checkpoint: Checkpoint, quant: CheckpointQuantization) -> Checkpoint:
    """The checkpoint with each layer's `qweight`, `qzeros`, `scales` (and `g_idx`) replaced
    by one dequantized `QuantizedWeightTensor` named `<layer>.weight`; other tensors (the
    layers kept in float, biases, norms) unchanged."""
    out: dict[str, CheckpointTensor] = {}
    for name, tensor in checkpoint.items():
        base, _, part = name.rpartition(".")
        if part == "bias" and base + ".qweight" in checkpoint:
            # AutoGPTQ stores a (zero) bias for every quantized layer, whether the model has
            # one or not: read where the model has a bias, not an error where it has none.
            out[name] = tensor.as_optional()
            continue
        if part not in _PARTS or base + ".qweight" not in checkpoint:
            out[name] = tensor
            continue
        if part != "qweight":
            continue  # read with its qweight
        tensors = {p: checkpoint[f"{base}.{p}"] for p in _PARTS if f"{base}.{p}" in checkpoint}
        missing = [p for p in ("qzeros", "scales") if p not in tensors]
        if missing:
            raise MaxError(f"{tensor.source}: {quant.format} layer {base!r} has qweight but no {', '.join(missing)}")
        if quant.desc_act and "g_idx" not in tensors:
            raise MaxError(f"{tensor.source}: {quant.format} layer {base!r} has desc_act but no g_idx")
        out[base + ".weight"] = int4_weight(base, tensors, quant)
    return out
