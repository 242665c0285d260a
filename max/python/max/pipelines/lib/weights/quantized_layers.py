"""Pre-quantized checkpoints into quantized layers: which decoder layers become `Fp8Linear` or
`Int4Linear`, and from what.

`dequantized_view` offers a pre-quantized checkpoint to the loader as float weights (exact
dequantizations, `QuantizedWeightTensor`s); read as they are, they are the dequantizing
path (the CPU's, and GPUs without FP8). `quantized_layer_transforms` then names, for each
decoder linear layer whose weight parts all come quantized, the transform that turns the
loaded layer into its quantized form with the checkpoint's own codes and scales (a fused
q/k/v or gate/up layer concatenates its parts' rows). Layers the checkpoint keeps in float
stay float. Without a checkpoint (`--load-format dummy`) or for `--quantization int4` on a
float checkpoint, every decoder linear is quantized from its values instead; so are a GGUF
file's on a GPU (`gguf_layer_transforms`: `Int4Linear` or `Int8Linear` by the file's bits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import torch
from torch import nn

from max.errors import MaxError
from max.nn.checkpoint_layout import Shard, Source, Stack
from max.nn.embedding import VocabParallelEmbedding, VocabParallelLMHead
from max.nn.fp8_linear import Fp8Linear, fp8_layer_bytes, fp8_shape_supported
from max.nn.gguf_grids import int4_groups_on_grid
from max.nn.int4_linear import DEFAULT_GROUP_SIZE, Int4Linear, int4_layer_bytes
from max.nn.int8_linear import Int8Linear, int8_linear_bytes
from max.nn.parallel import RowParallelLinear
from max.nn.quantized_embedding import QuantizedEmbedding
from max.nn.quantized_linear import quantizable_linears
from max.nn.transformer import Transformer
from max.pipelines.lib.weights.checkpoint import Checkpoint
from max.pipelines.lib.weights.fp8_checkpoint import dequantize_fp8_checkpoint
from max.pipelines.lib.weights.int4_checkpoint import dequantize_int4_checkpoint
from max.pipelines.lib.weights.network_loader import LayerTransform
from max.pipelines.lib.weights.quantization_config import FP8, CheckpointQuantization
from max.pipelines.lib.weights.quantized_tensor import Int4Groups, QuantizedWeightTensor
from max_kernels.int4_gemv import int4_kernels_take

logger = logging.getLogger("max.pipelines")

# GGML types that are plain floats (a table stored so stays in the float dtype).
_FLOAT_GGML = ("", "F32", "F16", "BF16", "F64")


def dequantized_view(checkpoint: Checkpoint, quant: CheckpointQuantization) -> Checkpoint:
    """The checkpoint with each quantized layer's tensors replaced by its dequantized weight."""
    if quant.method == FP8:
        return dequantize_fp8_checkpoint(checkpoint, quant)
    return dequantize_int4_checkpoint(checkpoint, quant)


def decoder_linears(network: nn.Module) -> dict[str, nn.Linear]:
    """The quantizable `nn.Linear` layers of `network`'s decoder layers, by module path."""
    out = {}
    for prefix, module in network.named_modules():
        if isinstance(module, Transformer):
            root = f"{prefix}.layers." if prefix else "layers."
            out.update({root + path: child for _, _, path, child in quantizable_linears(module.layers)})
    return out


def quantized_layer_transforms(
    network: nn.Module,
    state: Checkpoint | None,
    parameter_sources: dict[str, Source],
    method: str,
    dtype: torch.dtype,
    group_size: int = DEFAULT_GROUP_SIZE,
    keep_float: Collection[str] = (),
    integer_zeros: bool = True,
) -> tuple[dict[str, LayerTransform], dict[str, int]]:
    """(transforms by module path, bytes each replaced layer will hold) for the decoder's
    linear layers under `method` ("fp8" or "int4"): from the checkpoint's codes where
    `state` (the adapted, dequantized view) holds the layer quantized, from the loaded
    values where there is no quantized checkpoint (`state` None; int4 in groups of
    `group_size`, zeros as `Int4Linear.quantized` says), but for the layers in `keep_float`."""
    transforms: dict[str, LayerTransform] = {}
    sizes: dict[str, int] = {}
    kept = []
    for path, layer in decoder_linears(network).items():
        n, k = layer.weight.shape
        bias = layer.bias is not None
        if path in keep_float:
            make = None
        elif state is None:
            make = _fp8_from_values() if method == FP8 else _int4_from_values(k, dtype, group_size, integer_zeros)
        else:
            parts = _parts(parameter_sources[f"{path}.weight"], state)
            make = None if parts is None else (_fp8_from_checkpoint(parts) if method == FP8 else _int4_from_checkpoint(parts, dtype))
        if make is None or (method == FP8 and not fp8_shape_supported(n, k)):
            kept.append(path)
            continue
        transforms[path] = LayerTransform(make, torch.float32)
        if method == FP8:
            sizes[path] = fp8_layer_bytes(layer, dtype)
        else:
            group = group_size if state is None else getattr(make, "group_size", k)
            sizes[path] = int4_layer_bytes(n, k, group, dtype, bias)
    if kept:
        logger.info("%s: %d decoder linear layers kept in float (e.g. %s)", method, len(kept), kept[0])
    logger.info("%s: %d decoder linear layers quantized", method, len(transforms))
    return transforms, sizes


def gguf_layer_transforms(
    network: nn.Module, dtype: torch.dtype, four_bit: bool, wide: Collection[str] = (), tables: Collection[str] = ()
) -> tuple[dict[str, LayerTransform], dict[str, int]]:
    """(transforms by module path, bytes each replaced layer will hold) for a GGUF file's
    decoder linear layers on a GPU, quantized from their decoded values in groups of 32 (a
    GGUF block): int4 (`four_bit` files, on the grid the file's blocks decode to, so their
    codes survive: `int4_groups_on_grid`) but for the layers in `wide`, which the file stores with more bits, and int8 for every layer
    of a 5- to 8-bit file (Q8_0 kept code for code). Layers whose input features are not
    whole groups stay float. `tables` (from `gguf_quantized_tables`) names the untied
    embedding and LM head to keep quantized too, by the same rule (a Q4_K_M file's head is
    Q6_K: int8; its embedding Q4_K: int4)."""
    transforms: dict[str, LayerTransform] = {}
    sizes: dict[str, int] = {}
    for path in tables:
        vocab, hidden = network.get_submodule(path).weight.shape
        if not four_bit or path in wide:
            transforms[path] = LayerTransform(_int8_from_values(dtype), torch.float32)
            sizes[path] = int8_linear_bytes(vocab, hidden, dtype, False)
        else:
            transforms[path] = LayerTransform(_int4_from_gguf_values(dtype), torch.float32)
            sizes[path] = int4_layer_bytes(vocab, hidden, 32, dtype, False)
        if path == "embed_tokens":
            table = transforms[path].apply
            transforms[path] = LayerTransform(lambda layer, table=table: QuantizedEmbedding(table(layer), dtype, layer.tp), torch.float32)
    counts = {"int4": 0, "int8": 0, "float": 0}
    for path, layer in decoder_linears(network).items():
        n, k = layer.weight.shape
        bias = layer.bias is not None
        if k % 32:
            counts["float"] += 1
            continue
        if four_bit and path not in wide:
            make = _int4_from_gguf_values(dtype)
            sizes[path] = int4_layer_bytes(n, k, 32, dtype, bias)
            counts["int4"] += 1
        else:
            make = _int8_from_values(dtype)
            sizes[path] = int8_linear_bytes(n, k, dtype, bias)
            counts["int8"] += 1
        transforms[path] = LayerTransform(make, torch.float32)
    logger.info("GGUF on the GPU: %(int4)d decoder linear layers int4, %(int8)d int8, %(float)d float", counts)
    return transforms, sizes


def gguf_quantized_tables(network: nn.Module, state: Checkpoint | None) -> list[str]:
    """The module paths of the untied token embedding and LM head when the GGUF file stores
    them quantized (not F32/F16/BF16) and one process holds them whole. A tied embedding is
    the head's weight too, which the logits read whole every step: it stays float."""
    if getattr(network, "lm_head", None) is None:
        return []
    out = []
    for path, kind in (("embed_tokens", VocabParallelEmbedding), ("lm_head", VocabParallelLMHead)):
        module = getattr(network, path, None)
        entry = None if state is None else state.get(f"{path}.weight")
        if type(module) is kind and module.tp.size == 1 and entry is not None and entry.encoding not in _FLOAT_GGML:
            if module.weight.shape[1] % 32 == 0:
                out.append(path)
    return out


def _int4_from_gguf_values(dtype: torch.dtype) -> Callable[[nn.Module], nn.Module]:
    """int4 in groups of 32 on the grid the 4-bit file's blocks decode to (its codes kept)."""

    def make(layer: nn.Module) -> nn.Module:
        scales, zeros = int4_groups_on_grid(layer.weight, 32)
        return Int4Linear.from_dequantized(layer.weight, getattr(layer, "bias", None), scales, zeros, 32, None, dtype)

    return make


def _int8_from_values(dtype: torch.dtype) -> Callable[[nn.Module], nn.Module]:
    def make(layer: nn.Module) -> nn.Module:
        return Int8Linear.quantized(layer.weight, getattr(layer, "bias", None), dtype)

    return make


def _parts(source: Source, state: Checkpoint) -> list[tuple[QuantizedWeightTensor, Shard | None]] | None:
    """The quantized checkpoint tensors a weight is made of, in row order, with the shard
    each is read through; None unless every part is quantized."""
    if isinstance(source, str):
        entry = state[source]
        return [(entry, None)] if isinstance(entry, QuantizedWeightTensor) else None
    if isinstance(source, Shard):
        entry = state[source.name]
        return [(entry, source)] if isinstance(entry, QuantizedWeightTensor) else None
    if isinstance(source, Stack):
        return None
    out = []
    for part in source.parts:
        got = _parts(part, state)
        if got is None:
            return None
        out.extend(got)
    return out


def _rows(values: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    """Per-row values of a tensor, narrowed to a shard's rows (a column shard keeps them all)."""
    if shard is None or shard.dim != 0:
        return values
    return values[shard.start : shard.stop]


def _fp8_from_checkpoint(parts: list[tuple[QuantizedWeightTensor, Shard | None]]) -> Callable[[nn.Module], nn.Module]:
    """FP8 layers keep the checkpoint's codes with its per-row scales; block scales (which no
    per-row scale reproduces) are re-quantized per row from the dequantized values."""
    scales = [entry.fp8_row_scales() if entry.fp8_row_scales else None for entry, _ in parts]
    rows = None if any(s is None for s in scales) else torch.cat([_rows(s, sh) for s, (_, sh) in zip(scales, parts)])

    def make(layer: nn.Module) -> nn.Module:
        tp = layer.tp if isinstance(layer, RowParallelLinear) else None
        return Fp8Linear(layer.weight, layer.bias, tp, scales=rows)

    return make


def _fp8_from_values() -> Callable[[nn.Module], nn.Module]:
    def make(layer: nn.Module) -> nn.Module:
        return Fp8Linear(layer.weight, layer.bias, layer.tp if isinstance(layer, RowParallelLinear) else None)

    return make


def _int4_from_checkpoint(parts: list[tuple[QuantizedWeightTensor, Shard | None]], dtype: torch.dtype) -> Callable:
    """The int4 layer of a weight made of GPTQ / AWQ parts (their groups read when the layer
    is loaded). A fused layer whose parts order their columns differently (act-order
    quantized apart) stays float."""
    if any(shard is not None for _, shard in parts):
        raise MaxError("int4 (GPTQ / AWQ) checkpoints do not support tensor parallelism yet")

    def make(layer: nn.Module) -> nn.Module:
        groups: list[Int4Groups] = [entry.int4_groups() for entry, _ in parts]
        first = groups[0]
        if not all(_same_columns(g, first) for g in groups):
            logger.info("int4: the parts of %s group their columns differently; kept in float", parts[0][0].name)
            return layer
        scales = torch.cat([g.scales for g in groups])
        zeros = torch.cat([g.zeros for g in groups])
        return Int4Linear.from_dequantized(layer.weight, layer.bias, scales, zeros, first.group_size, first.g_idx, dtype)

    make.group_size = parts[0][0].int4_group_size  # type: ignore[attr-defined]
    return make


def _same_columns(a: Int4Groups, b: Int4Groups) -> bool:
    """Whether two parts of a fused weight put the same input columns in the same groups."""
    if a.group_size != b.group_size or (a.g_idx is None) != (b.g_idx is None):
        return False
    return a.g_idx is None or torch.equal(a.g_idx, b.g_idx)


def _int4_from_values(
    k: int, dtype: torch.dtype, group_size: int, integer_zeros: bool
) -> Callable[[nn.Module], nn.Module] | None:
    """Round-to-nearest int4 in groups of `group_size` (where it divides K) of the loaded values."""
    if k % group_size or not int4_kernels_take(group_size):
        return None

    def make(layer: nn.Module) -> nn.Module:
        return Int4Linear.quantized(layer.weight, getattr(layer, "bias", None), dtype, group_size, integer_zeros)

    return make
