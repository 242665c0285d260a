"""Weight-only quantized linear layers for the CPU: int8 and int4 in groups of 32.

A decode step on the CPU reads every weight once per token, so its speed is the weights'
bytes over the memory bandwidth: float32 weights cost four bytes each, int8 one, int4 half.
These layers keep the weights quantized in memory and multiply by our C kernels
(`max_kernels.cpu_int4`, `cpu_int8`: rows in int16 per group of 32, integer dot products)
wherever they build, else by torch's packed weight-only kernels (`_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`, the ops gpt-fast uses): `int4_kernel`. Activations and
outputs are in the network's compute dtype (bfloat16: torch's float32 variants are
reference loops, tens of times slower).

- int8: w[n, k] = scale[g, n] * q[n, k], q in [-127, 127], one scale per group of 32 input
  features (GGUF's Q8_0 block; torch's kernel: one scale per output channel).
- int4: w[n, k] = scale[g, n] * (q[n, k] - 8) + zero[g, n], q in [0, 15], for the group
  g = k // group_size of input features. A GGUF 4-bit block's values lie on such a grid,
  whose codes are kept (`max.nn.gguf_grids`); other values are quantized by min / max.

`quantize_linears(network, scheme, dtype)` swaps a loaded network's linear layers for
these, in place; `quantized_head` gives the LM head an int8 copy for its logits.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping

import torch
from torch import nn

from max.errors import MaxError
from max.nn.gguf_grids import int4_groups_on_grid
from max.nn.parallel import RowParallelLinear
from max_kernels import cpu_int4, cpu_int8

logger = logging.getLogger("max.nn")

SCHEMES = ("int8", "int4", "int8_dynamic")  # int8_dynamic: max.nn.int8_dynamic_linear
INT4_GROUP_SIZE = 32


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [N, K], float32 scales [N]) of a float weight [N, K], symmetric per row."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    codes = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


def quantize_int4(
    weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int32 [N, K] in [0, 15], scales [K/G, N], zeros [K/G, N]) of a float weight,
    asymmetric per group of `group_size` input features; the value is
    scale * (code - 8) + zero. A group whose values lie on a 16-step grid (decoded from a
    GGUF Q4_0 / Q4_1 / Q4_K block) keeps that grid and its codes exactly
    (`int4_groups_on_grid`); the others are quantized by their min / max."""
    n, k = weight.shape
    grid_scales, grid_zeros = int4_groups_on_grid(weight, group_size)  # w = (code - zero) * scale
    w = weight.float().reshape(n, k // group_size, group_size)
    scales, offsets = grid_scales[..., None], grid_zeros[..., None]
    codes = torch.round(w / scales + offsets).clamp(0, 15).to(torch.int32).reshape(n, k)
    zeros = (8.0 - offsets) * scales
    return codes, scales.squeeze(-1).t().contiguous(), zeros.squeeze(-1).t().contiguous()


def int4_supported(out_features: int, in_features: int, group_size: int = INT4_GROUP_SIZE) -> bool:
    """Whether torch's CPU int4 packing takes this shape (N a multiple of 16, K of the group)."""
    return out_features % 16 == 0 and in_features % group_size == 0


class Int8WeightOnlyLinear(nn.Module):
    """`y = x @ (scale * q).T + bias` with int8 codes q kept in memory."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        codes, scales = quantize_int8(weight)
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", codes)
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        # The packed kernels read x as dense rows (a strided view, e.g. a column slice of a
        # wider projection, crashed `_weight_int8pack_mm`).
        x2 = x.reshape(-1, shape[-1]).to(self.scales.dtype).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int4WeightOnlyLinear(nn.Module):
    """`y = x @ W.T + bias` with W kept as int4 codes in groups of input features, packed
    for the CPU int4 product `kernel` names (default: `int4_kernel()`'s rule): torch's
    (`_weight_int4pack_mm_for_cpu`) or ours for AVX2 (`max_kernels.cpu_int4`, rows quantized
    to int16 per group of 32, integer dot products). Both hold the same codes, scales and
    zeros, in each kernel's own layout."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        group_size: int = INT4_GROUP_SIZE,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if not int4_supported(self.out_features, self.in_features, group_size):
            raise MaxError(
                f"int4 weights need out_features % 16 == 0 and in_features % {group_size} == 0, "
                f"got {tuple(weight.shape)}"
            )
        codes, scales, zeros = quantize_int4(weight, group_size)
        self.group_size = group_size
        self.dtype = dtype
        self.kernel = kernel or int4_kernel()
        # Ours serves groups of 32 in bfloat16 networks (its scales and zeros float32); the
        # rest stays on torch's (scales and zeros in the compute dtype, as it requires).
        if self.kernel == "native" and (group_size != cpu_int4.GROUP or dtype != torch.bfloat16):
            self.kernel = "torch"
        if self.kernel == "native":
            packed, pairs = cpu_int4.pack(codes, scales, zeros)
            cpu_int4.check_weight(packed, pairs)
            self.register_buffer("weight_int4", packed)
            self.register_buffer("scales_and_zeros", pairs)
        else:
            self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            self.register_buffer("scales_and_zeros", torch.stack((scales, zeros), dim=-1).to(dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native" and self.bias is None and x.dim() == 2 and x.dtype == torch.bfloat16:
            # A decode step's rows as they come (hundreds of calls a step: no reshapes).
            return cpu_int4.int4_matmul(x, self.weight_int4, self.scales_and_zeros, weight_checked=True)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.dtype).contiguous()
        if self.kernel == "native":
            y = cpu_int4.int4_matmul(x2, self.weight_int4, self.scales_and_zeros, weight_checked=True)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_int4, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"int4 in groups of {self.group_size}, {self.kernel} kernel"
        )


class Int8GroupLinear(nn.Module):
    """`y = x @ W.T + bias` with W kept as int8 codes in groups of 32 input features, one
    float32 scale each (GGUF's Q8_0 block, kept exactly), multiplied by our AVX2 kernel
    (`max_kernels.cpu_int8`: rows quantized to int16 per group, integer dot products). The
    int8 layers and the LM head's logits take it where our kernels run (`int8_groups`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        codes, scales = cpu_int8.quantize(weight)
        cpu_int8.check_weight(codes, scales)
        self.dtype = dtype
        self.register_buffer("weight_int8", codes)
        self.register_buffer("group_scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.dtype)
        y = cpu_int8.int8_matmul(x2, self.weight_int8, self.group_scales, weight_checked=True)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 in groups of {cpu_int8.GROUP}"


def quantized_head(network: nn.Module, scheme: str, dtype: torch.dtype) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """The LM head's replacement (by module path: `lm_head`, or `embed_tokens` when tied)
    for a weight-only quantized network on our kernels: the table gets an int8 copy in
    groups of 32 (`Int8GroupLinear`) that computes the logits, and keeps its float rows for
    the embedding lookups (the int8 copy adds half the table's bfloat16 bytes).

    Only where the int8 layers are in groups (`int8_groups`: our kernels, bfloat16), in
    one process: the head's bfloat16 product was ~2 ms of a ~13 ms SmolLM2 decode step
    with AVX2 alone. A GGUF file's Q8_0 table (SmolLM2's) keeps its
    codes and scales exactly, so only the rows' int16 rounding is new; a float table is
    quantized by its groups, 4 bits finer than per channel (which failed verification).
    Elsewhere: none (the head stays in the float dtype)."""
    path = "lm_head" if getattr(network, "lm_head", None) is not None else "embed_tokens"
    table = getattr(network, path, None)
    if scheme not in ("int4", "int8") or table is None or not hasattr(table, "quantized_logits") or table.tp.size > 1:
        return {}
    if not int8_groups(table.weight.shape[1], dtype):
        return {}

    def attach(layer: nn.Module) -> nn.Module:
        layer.quantized_logits = Int8GroupLinear(layer.weight, None, dtype)
        layer.weight = nn.Parameter(layer.weight.to(dtype), requires_grad=False)
        return layer

    logger.info("the LM head (%s) computes its logits in int8 groups of 32 (our AVX2 kernel)", path)
    return {path: attach}


INT4_KERNELS = ("torch", "native")


@functools.cache
def int4_kernel() -> str:
    """The CPU's quantized products in this process, `native` or `torch`:
    `$MAX_CPU_INT4_KERNEL` if set; else ours wherever they are available (AVX2 and FMA, a C
    compiler): int4 layers on `max_kernels.cpu_int4`, int8 layers in groups of 32 and the
    LM head's logits on `max_kernels.cpu_int8` (`int8_groups`); else torch's (int4 with
    bfloat16 scales, int8 per channel, a bfloat16 head). The rule is fixed per machine, so
    every process (and every test) of a machine computes the same bits.

    Measured on a 2-core Zen 4 EPYC (BENCHMARKS.md, 2026-12-08, eighth session): with AVX2
    alone (`ATEN_CPU_CAPABILITY=avx2`) ours are faster (SmolLM2 q4_1 decode 11.5-14.6 ms a
    token against 15.5-19.0 before) and with AVX-512 even for int4 (12.3-13.7 against
    12.3-13.8 ms), faster for int8 (16.0-16.5 against 19.0-24.1); with either, torch's
    products are further from the reference (`verify_pipelines` max KL against transformers
    bfloat16, threshold 0.02, AVX2 / AVX-512: Qwen2.5-Coder q8_0 0.058 / 0.199 with torch's,
    0.004 / 0.006 with ours; q4_k 0.029 / 0.029 and 0.005 / 0.020): per-channel int8 cannot
    hold a Q8_0 file's groups, and bfloat16 scales move all 32 weights of a group together."""
    forced = os.environ.get("MAX_CPU_INT4_KERNEL")
    if forced:
        if forced not in INT4_KERNELS:
            raise MaxError(f"MAX_CPU_INT4_KERNEL={forced!r}: choose from {', '.join(INT4_KERNELS)}")
        if forced == "native" and not _ours_available():
            raise MaxError("MAX_CPU_INT4_KERNEL=native, but max_kernels.cpu_int4 / cpu_int8 are not available here (AVX2 and FMA, a C compiler)")
        return forced
    return "native" if _ours_available() else "torch"


def _ours_available() -> bool:
    """Whether both of our quantized CPU kernels build and load here (the `native` rule
    uses both: int4 layers, int8 layers and the head)."""
    return cpu_int4.available() and cpu_int8.available()


def quantized_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, scheme: str, dtype: torch.dtype
) -> nn.Module:
    """A quantized layer for a float weight [N, K]: int4 where its shape allows (else int8,
    the same layer at twice the bytes), int8 weight-only, or int8 weights and activations
    (`int8_dynamic`)."""
    if scheme not in SCHEMES:
        raise MaxError(
            f"unknown weight-only quantization {scheme!r} (choose from {', '.join(SCHEMES)})"
        )
    if scheme == "int4" and int4_supported(*weight.shape):
        return Int4WeightOnlyLinear(weight, bias, dtype)
    if scheme == "int8_dynamic":
        from max.nn.int8_dynamic_linear import Int8DynamicLinear  # imports the quantized engine

        return Int8DynamicLinear(weight, bias, dtype)
    if int8_groups(weight.shape[1], dtype):
        return Int8GroupLinear(weight, bias, dtype)
    return Int8WeightOnlyLinear(weight, bias, dtype)


def int8_groups(in_features: int, dtype: torch.dtype) -> bool:
    """Whether an int8 weight-only layer is int8 in groups of 32 by our kernel
    (`Int8GroupLinear`) rather than per channel by torch's (`Int8WeightOnlyLinear`): where
    our kernels run (`int4_kernel()` native), in bfloat16, for whole groups. Per-channel
    scales re-quantize a GGUF file's 8-bit (Q8_0) and 6-bit (Q6_K, the wide layers of a
    Q4_K_M file) blocks coarsely (Qwen2.5-Coder q8_0 failed verification with them), and
    with AVX2 alone torch's int8 product gains nothing over bfloat16's."""
    return dtype == torch.bfloat16 and in_features % cpu_int8.GROUP == 0 and int4_kernel() == "native"


def quantizable_linears(root: nn.Module) -> Iterator[tuple[nn.Module, str, str, nn.Linear]]:
    """(parent, name, path, layer) of every `nn.Linear` below `root` that a quantization may
    replace: all but the children a module lists in `unquantized_children` (a mixture's
    router). The modules are listed before the first is yielded, so the caller may replace
    each layer (`setattr(parent, name, ...)`) as it goes."""
    for path, parent in list(root.named_modules()):
        keep = getattr(parent, "unquantized_children", ())
        for name, child in list(parent.named_children()):
            if name not in keep and isinstance(child, nn.Linear):
                yield parent, name, f"{path}.{name}" if path else name, child


def weight_only_replacements(
    network: nn.Module, scheme: str, dtype: torch.dtype, keep_int8: Collection[str] = ()
) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """For every single-process `nn.Linear` of `network` (q/k/v, o, gate/up, down; not a
    mixture's router, which a module lists in `unquantized_children`), by module path, the
    function that turns the loaded layer into its weight-only quantized version. Works on a
    network built on the meta device, so a loader can quantize each layer as soon as its
    weights are in.

    The LM head (an embedding-shaped layer, tied or not) is left to the caller's float
    dtype: its logits decide every token, and int8 per output channel (the only grouping
    torch's int8 kernel has) gives eight times bfloat16's error on an embedding with
    outlying rows, which fails verification. Under int4 the layers named (by module path)
    in `keep_int8` (those a GGUF file stores with more than four bits) are int8:
    re-quantizing an 8-bit tensor to 4 bits loses what the file kept. Layers split across
    tensor-parallel ranks are refused: the quantized path is for one CPU process.
    """
    if scheme not in SCHEMES:
        raise MaxError(f"unknown weight-only quantization {scheme!r} (choose from {', '.join(SCHEMES)})")
    out: dict[str, Callable[[nn.Module], nn.Module]] = {}
    counts = {"int8": 0, "int4": 0, "int8_dynamic": 0}
    for _, _, full, child in quantizable_linears(network):
        if isinstance(child, RowParallelLinear) and child.tp.size > 1:
            raise MaxError("weight-only quantization does not support tensor parallelism")
        chosen = "int8" if full in keep_int8 else scheme
        out[full] = lambda layer, chosen=chosen: quantized_linear(layer.weight, layer.bias, chosen, dtype)
        counts["int4" if chosen == "int4" and int4_supported(*child.weight.shape) else "int8_dynamic" if chosen == "int8_dynamic" else "int8"] += 1
    logger.info("%s: %d layers int4, %d int8, %d int8 with int8 activations", scheme, counts["int4"], counts["int8"], counts["int8_dynamic"])
    return out


def replace_layers(network: nn.Module, replacements: Mapping[str, Callable[[nn.Module], nn.Module]]) -> int:
    """Applies `replacements` (module path -> loaded layer -> new layer) to an already loaded
    network, in place; returns how many layers were replaced."""
    with torch.no_grad():
        for path, make in replacements.items():
            parent_path, _, name = path.rpartition(".")
            parent = network.get_submodule(parent_path) if parent_path else network
            setattr(parent, name, make(getattr(parent, name)))
    return len(replacements)


def quantize_linears(
    network: nn.Module, scheme: str, dtype: torch.dtype, keep_int8: Collection[str] = ()
) -> int:
    """Replaces, in place, the linear layers of a loaded `network` by their weight-only
    quantized versions (see `weight_only_replacements`); returns how many."""
    return replace_layers(network, weight_only_replacements(network, scheme, dtype, keep_int8))
