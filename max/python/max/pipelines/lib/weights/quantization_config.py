"""Pre-quantized checkpoints: what `quantization_config` in config.json says, in one object.

Users download checkpoints that are already quantized (`...-FP8`, `...-GPTQ-Int4`,
`...-AWQ`); their config.json says how, and the user passes no flag. `read_quantization`
turns that entry into a `CheckpointQuantization`, or refuses, naming the format, one we
cannot read. Supported:

- FP8 e4m3 weights (`method` "fp8"), activations quantized per token at run time:
  - `compressed-tensors` (llmcompressor's output), formats `float-quantized` and
    `naive-quantized` with 8-bit float weights: `weight` + `weight_scale` per tensor [1],
    per channel [N, 1] or per 128x128 block [N/128, K/128];
  - `fbgemm_fp8`: `weight` + `weight_scale` [N, 1] per channel;
  - `fp8` (transformers' fine-grained FP8, as Qwen3-FP8 and DeepSeek ship):
    `weight` + `weight_scale_inv` per block of `weight_block_size`, or a per-tensor
    `weight_scale` without it.
  A compressed-tensors `kv_cache_scheme` (with FP8 weights, or alone beside float weights)
  calibrates the KV cache: `weights.kv_cache_scales`.
- int4 weight-only (`method` "int4"):
  - `gptq` (AutoGPTQ / GPTQModel, 4 bits, any group size, `desc_act`, symmetric or not;
    `checkpoint_format` gptq stores zero points minus one, gptq_v2 as they are);
  - `awq` (AutoAWQ's GEMM layout, `version` gemm, with zero points).

`mxfp4` (gpt-oss's experts) is read by its architecture and is not a checkpoint scheme here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from max.errors import MaxError

FP8 = "fp8"
INT4 = "int4"
# Read elsewhere (the gpt-oss experts' MXFP4 blocks): not a scheme of the linear layers.
_HANDLED_ELSEWHERE = ("mxfp4",)
SUPPORTED_FORMATS = ("compressed-tensors (FP8)", "fbgemm_fp8", "fp8", "gptq (4-bit)", "awq (gemm)")


@dataclass(frozen=True)
class CheckpointQuantization:
    """How a pre-quantized checkpoint stores its linear layers' weights.

    `method`: "fp8" or "int4". `format`: the `quant_method` it came from. FP8: `strategy`
    is "tensor", "channel" or "block" (`block_size` rows x columns). int4: `group_size`
    input features per scale (0: one group per row), `symmetric`, `desc_act` (groups not
    in column order: a `g_idx` tensor says each column's group), `zero_offset` (what GPTQ's
    v1 format subtracted from the zero points it stored)."""

    method: str
    format: str
    strategy: str = ""
    block_size: tuple[int, int] | None = None
    group_size: int = 0
    symmetric: bool = True
    desc_act: bool = False
    zero_offset: int = 0

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.method == FP8:
            how = f"{self.block_size[0]}x{self.block_size[1]} blocks" if self.block_size else f"per {self.strategy}"
            return f"{self.format} FP8 e4m3 weights with scales {how}"
        group = f"groups of {self.group_size}" if self.group_size else "one group per row"
        extra = ", act-order" if self.desc_act else ""
        return f"{self.format} int4 weights in {group} ({'symmetric' if self.symmetric else 'with zero points'}{extra})"


def quantization_entry(hf_config: Any) -> dict | None:
    """config.json's `quantization_config` as a dict (also under a multimodal model's
    text config), None when there is none."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        text = getattr(hf_config, "text_config", None)
        qc = getattr(text, "quantization_config", None) if text is not None else None
    if qc is None:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)
    return dict(qc)


def read_quantization(hf_config: Any) -> CheckpointQuantization | None:
    """The checkpoint's quantization (None for a float checkpoint, or one whose scheme an
    architecture reads itself). Raises MaxError naming a format we do not read."""
    entry = quantization_entry(hf_config)
    if entry is None:
        return None
    method = str(entry.get("quant_method", "")).lower()
    if method in _HANDLED_ELSEWHERE:
        return None
    readers = {
        "compressed-tensors": _compressed_tensors,
        "fbgemm_fp8": lambda e: CheckpointQuantization(FP8, "fbgemm_fp8", "channel"),
        "fp8": _fine_grained_fp8,
        "gptq": _gptq,
        "awq": _awq,
    }
    if method not in readers:
        raise MaxError(
            f"config.json's quantization_config has quant_method {method or 'missing'!r}, a pre-quantized "
            f"format we do not read (we read: {', '.join(SUPPORTED_FORMATS)}); use a float or FP8/GPTQ/AWQ "
            "checkpoint of this model"
        )
    return readers[method](entry)


def _refuse(what: str) -> MaxError:
    return MaxError(f"config.json's quantization_config: {what} is not supported (we read: {', '.join(SUPPORTED_FORMATS)})")


def _compressed_tensors(entry: dict) -> CheckpointQuantization | None:
    """llmcompressor's FP8 schemes (FP8, FP8_DYNAMIC, FP8_BLOCK): one weight scheme for all
    groups, 8-bit float. None for float weights with only a `kv_cache_scheme`."""
    groups = entry.get("config_groups") or {}
    schemes = []
    for name, group in groups.items():
        weights = (group or {}).get("weights") or {}
        fmt = group.get("format") or entry.get("format") or ""
        if fmt not in ("float-quantized", "naive-quantized"):
            raise _refuse(f"compressed-tensors format {fmt or 'missing'!r} (group {name!r})")
        if weights.get("type") != "float" or int(weights.get("num_bits", 0)) != 8:
            raise _refuse(
                f"compressed-tensors weights of type {weights.get('type')!r} with {weights.get('num_bits')} bits "
                f"(group {name!r}; only 8-bit float weights are read)"
            )
        block = weights.get("block_structure")
        schemes.append((weights.get("strategy"), tuple(block) if block else None))
    if not schemes:
        if entry.get("kv_cache_scheme"):
            return None  # float weights, only the KV cache calibrated (weights.kv_cache_scales)
        raise _refuse("a compressed-tensors config without config_groups")
    if len(set(schemes)) > 1:
        raise _refuse(f"compressed-tensors groups with different weight strategies {sorted(set(map(str, schemes)))}")
    strategy, block = schemes[0]
    if strategy not in ("tensor", "channel", "block"):
        raise _refuse(f"compressed-tensors FP8 weight strategy {strategy!r}")
    if strategy == "block" and (block is None or len(block) != 2):
        raise _refuse("a compressed-tensors block strategy without a two-number block_structure")
    return CheckpointQuantization(FP8, "compressed-tensors", strategy, block if strategy == "block" else None)


def _fine_grained_fp8(entry: dict) -> CheckpointQuantization:
    """transformers' `fp8` method: per-block `weight_scale_inv` with `weight_block_size`, else
    one `weight_scale` per tensor."""
    if str(entry.get("fmt", "e4m3")).lower() != "e4m3":
        raise _refuse(f"fp8 format {entry.get('fmt')!r} (only e4m3)")
    block = entry.get("weight_block_size")
    if block:
        if len(block) != 2:
            raise _refuse(f"fp8 weight_block_size {block!r}")
        return CheckpointQuantization(FP8, "fp8", "block", (int(block[0]), int(block[1])))
    return CheckpointQuantization(FP8, "fp8", "tensor")


def _gptq(entry: dict) -> CheckpointQuantization:
    bits = int(entry.get("bits", 0))
    if bits != 4:
        raise _refuse(f"gptq with {bits} bits (only 4)")
    fmt = str(entry.get("checkpoint_format") or entry.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise _refuse(f"gptq checkpoint_format {fmt!r} (we read gptq and gptq_v2)")
    group = int(entry.get("group_size", -1))
    return CheckpointQuantization(
        INT4, "gptq",
        group_size=max(group, 0),
        symmetric=bool(entry.get("sym", True)),
        desc_act=bool(entry.get("desc_act", False)),
        zero_offset=1 if fmt == "gptq" else 0,
    )  # fmt: skip


def _awq(entry: dict) -> CheckpointQuantization:
    bits = int(entry.get("bits", entry.get("w_bit", 0)))
    version = str(entry.get("version", "gemm")).lower()
    if bits != 4:
        raise _refuse(f"awq with {bits} bits (only 4)")
    if version != "gemm":
        raise _refuse(f"awq version {version!r} (only the gemm layout)")
    if not entry.get("zero_point", True):
        raise _refuse("awq without zero points")
    group = int(entry.get("group_size", entry.get("q_group_size", -1)))
    return CheckpointQuantization(INT4, "awq", group_size=max(group, 0), symmetric=False)
