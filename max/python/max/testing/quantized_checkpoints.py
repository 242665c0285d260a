"""Tiny pre-quantized checkpoints as users download them, and the float checkpoint each one
stands for (its exact dequantization, the reference transformers loads).

`quantize_tiny_checkpoint(float_dir, out_dir, kind)` rewrites the decoder linear weights of
a tiny checkpoint written by `write_tiny_checkpoint` and returns (quantized_dir,
reference_dir):

- `ct-tensor`, `ct-channel`, `ct-block`: compressed-tensors FP8 (`float-quantized`), scales
  from compressed-tensors' own `calculate_qparams` and codes from its own
  `FloatQuantizationCompressor` (llmcompressor's FP8, FP8_DYNAMIC and FP8_BLOCK schemes,
  blocks of 16 x 32 here so that a tiny weight has several); the reference is its own
  `decompress`.
- `fbgemm`: fbgemm_fp8 (e4m3 `weight`, float32 `weight_scale` [N, 1] by absmax per row).
- `fp8-block`: transformers' fine-grained `fp8` (`weight_scale_inv` per block of 32 x 32).
- `gptq-...`, `awq`: int4 packed by the loops below, written from GPTQ's and AWQ's published
  packing independently of the loader's unpacking (see `int4_checkpoint`); GPTQ layers get
  the zero `bias` AutoGPTQ writes for every layer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CT_BLOCK = (16, 32)
FP8_BLOCK = (32, 32)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _is_decoder_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(".weight") and name.split(".")[-2] in _LINEARS


def _fp8_absmax(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def _compressed_tensors(w: torch.Tensor, strategy: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """compressed-tensors' own quantization of w: (stored tensors, dequantized weight)."""
    from compressed_tensors.compressors.naive_quantized import FloatQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    block = list(CT_BLOCK) if strategy == "block" else None
    args = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, block_structure=block)
    if strategy == "tensor":
        lo, hi = w.amin(), w.amax()
    elif strategy == "channel":
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    else:
        n, k = w.shape
        blocks = w.reshape(n // CT_BLOCK[0], CT_BLOCK[0], k // CT_BLOCK[1], CT_BLOCK[1])
        lo, hi = blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))
    scale, _ = calculate_qparams(lo, hi, args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    stored = FloatQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    dequantized = FloatQuantizationCompressor.decompress(dict(stored), scheme)["weight"]
    return {"weight": stored["weight"], "weight_scale": stored["weight_scale"]}, dequantized.float()


def _ct_config(strategy: str) -> dict:
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    block = list(CT_BLOCK) if strategy == "block" else None
    weights = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, block_structure=block)
    acts = QuantizationArgs(num_bits=8, type="float", strategy="token", symmetric=True, dynamic=True)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    config = QuantizationConfig(
        config_groups={"group_0": scheme}, format="float-quantized", quantization_status="compressed", ignore=["lm_head"]
    )
    return config.model_dump(mode="json", exclude_none=True)


def _fbgemm(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    scale = (w.abs().amax(dim=1, keepdim=True) / 448).clamp(min=1e-12)
    codes = _fp8_absmax(w, scale)
    return {"weight": codes, "weight_scale": scale}, codes.float() * scale


def _fine_grained_fp8(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    bn, bk = FP8_BLOCK
    n, k = w.shape
    blocks = w.reshape(n // bn, bn, k // bk, bk)
    scale_inv = (blocks.abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)
    full = scale_inv.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    codes = _fp8_absmax(w, full)
    return {"weight": codes, "weight_scale_inv": scale_inv}, codes.float() * full


def gptq_quantize(
    w: torch.Tensor, group: int, symmetric: bool, act_order: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest in GPTQ's terms: (codes [N, K], zeros [groups, N] int, scales
    [groups, N] float16, g_idx [K]); with `act_order` the columns are put in groups in a
    random order, as desc_act does. Zeros stay in [1, 15] (GPTQ's v1 format stores zero - 1,
    which cannot hold -1)."""
    n, k = w.shape
    g_idx = torch.arange(k) // group
    if act_order:
        order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(k, dtype=torch.long)
        g_idx[order] = torch.arange(k) // group
    groups = k // group
    scales = torch.empty(groups, n)
    zeros = torch.empty(groups, n, dtype=torch.long)
    codes = torch.empty(n, k, dtype=torch.long)
    for g in range(groups):
        cols = (g_idx == g).nonzero().flatten()
        part = w[:, cols]
        if symmetric:
            s = (part.abs().amax(dim=1) / 7.5).clamp(min=1e-6)
            z = torch.full((n,), 8, dtype=torch.long)
        else:
            lo, hi = part.amin(dim=1).clamp(max=0), part.amax(dim=1).clamp(min=0)
            s = ((hi - lo) / 14).clamp(min=1e-6)
            z = torch.round(-lo / s).long().clamp(1, 15)
        s = s.half().float()
        scales[g], zeros[g] = s, z
        codes[:, cols] = torch.round(part / s[:, None] + z[:, None]).clamp(0, 15).long()
    return codes, zeros, scales.half(), g_idx


def int4_dequantized(codes, zeros, scales, g_idx) -> torch.Tensor:
    """The float32 weight [N, K] of GPTQ-style codes, zeros, scales and g_idx."""
    return (codes.float() - zeros[g_idx].t().float()) * scales[g_idx].t().float()


def _as_int32(values: torch.Tensor) -> torch.Tensor:
    """int64 bit patterns of 32 bits -> int32 with the same bits."""
    values = values & 0xFFFFFFFF
    return torch.where(values >= 2**31, values - 2**32, values).to(torch.int32)


def pack_gptq(codes, zeros, scales, g_idx, zero_offset: int = 1) -> dict[str, torch.Tensor]:
    """GPTQ's tensors by its published packing, one nibble at a time."""
    n, k = codes.shape
    qweight = torch.zeros(k // 8, n, dtype=torch.long)
    for i in range(k // 8):
        for j in range(8):
            qweight[i] |= codes[:, 8 * i + j] << (4 * j)
    stored = zeros - zero_offset
    qzeros = torch.zeros(zeros.shape[0], n // 8, dtype=torch.long)
    for c in range(n // 8):
        for j in range(8):
            qzeros[:, c] |= stored[:, 8 * c + j] << (4 * j)
    return {"qweight": _as_int32(qweight), "qzeros": _as_int32(qzeros), "scales": scales, "g_idx": g_idx.to(torch.int32)}


def pack_awq(codes, zeros, scales) -> dict[str, torch.Tensor]:
    """AWQ's GEMM tensors by its published packing: along the output dimension, output
    8c + AWQ_ORDER[i] in nibble i of column c."""
    n, k = codes.shape
    intweight = codes.t()  # [K, N]
    qweight = torch.zeros(k, n // 8, dtype=torch.long)
    qzeros = torch.zeros(zeros.shape[0], n // 8, dtype=torch.long)
    for c in range(n // 8):
        for i in range(8):
            qweight[:, c] |= intweight[:, 8 * c + AWQ_ORDER[i]] << (4 * i)
            qzeros[:, c] |= zeros[:, 8 * c + AWQ_ORDER[i]] << (4 * i)
    return {"qweight": _as_int32(qweight), "qzeros": _as_int32(qzeros), "scales": scales}


def _int4(w: torch.Tensor, kind: str, group: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    symmetric, act_order = "sym" in kind.split("-"), "actorder" in kind.split("-")
    if kind == "awq":
        codes, zeros, scales, g_idx = gptq_quantize(w, group, False, False)
        return pack_awq(codes, zeros, scales), int4_dequantized(codes, zeros, scales, g_idx)
    codes, zeros, scales, g_idx = gptq_quantize(w, group, symmetric, act_order, seed)
    # AutoGPTQ writes a zero bias for every quantized layer, whether the model has one or not.
    parts = {**pack_gptq(codes, zeros, scales, g_idx), "bias": torch.zeros(w.shape[0], dtype=torch.float16)}
    return parts, int4_dequantized(codes, zeros, scales, g_idx)


def _input_seed(name: str) -> int:
    """One act-order per layer input: q/k/v share theirs, gate/up theirs (GPTQ orders a
    layer's columns by its input's statistics, the same for the projections that read it)."""
    layer, proj = int(name.split(".")[2]), name.split(".")[-2]
    shared = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3}
    return 4 * layer + shared[proj]


def _config_entry(kind: str, group: int) -> dict:
    if kind.startswith("ct-"):
        return _ct_config(kind.removeprefix("ct-"))
    if kind == "fbgemm":
        return {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}
    if kind == "fp8-block":
        return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(FP8_BLOCK)}
    if kind == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    parts = kind.split("-")
    return {
        "quant_method": "gptq", "bits": 4, "group_size": group, "sym": "sym" in parts,
        "desc_act": "actorder" in parts, "checkpoint_format": "gptq",
    }  # fmt: skip


def quantize_tiny_checkpoint(float_dir: Path, out_dir: Path, kind: str, group: int = 32) -> tuple[Path, Path]:
    """(quantized checkpoint, its dequantized float reference) of a tiny float checkpoint;
    `kind` as in the module docstring (`gptq-sym`, `gptq-asym`, `gptq-sym-actorder`, ...)."""
    from safetensors.torch import load_file, save_file

    float_dir, out_dir = Path(float_dir), Path(out_dir)
    quantized, reference = out_dir / "quantized", out_dir / "reference"
    for d in (quantized, reference):
        shutil.copytree(float_dir, d, dirs_exist_ok=True)
    tensors = load_file(str(float_dir / "model.safetensors"))
    stored: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, w in sorted(tensors.items()):
        if not _is_decoder_linear(name):
            stored[name] = dequantized[name] = w
            continue
        base = name.removesuffix(".weight")
        if kind.startswith("ct-"):
            parts, deq = _compressed_tensors(w.float(), kind.removeprefix("ct-"))
        elif kind == "fbgemm":
            parts, deq = _fbgemm(w.float())
        elif kind == "fp8-block":
            parts, deq = _fine_grained_fp8(w.float())
        else:
            parts, deq = _int4(w.float(), kind, group, seed=_input_seed(name))
        stored.update({f"{base}.{p}": t.contiguous() for p, t in parts.items()})
        dequantized[name] = deq.to(w.dtype)
    save_file(stored, str(quantized / "model.safetensors"), metadata={"format": "pt"})
    save_file(dequantized, str(reference / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = _config_entry(kind, group)
    (quantized / "config.json").write_text(json.dumps(config, indent=2))
    return quantized, reference
