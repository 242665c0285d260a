"""Calibrated KV cache scales in checkpoints, read into the FP8 KV cache's per-layer scales.

Checkpoints quantized with a KV cache scheme (llmcompressor's compressed-tensors
`kv_cache_scheme`, ModelOpt, AutoFP8) carry one float32 scale per decoder layer for its
keys and one for its values, under names like these (any prefix before `layers.N`):

- `layers.N.self_attn.k_scale`, `.v_scale` (compressed-tensors; `self_attn.attn.k_scale` as
  vLLM's own exports spell it),
- `layers.N.self_attn.k_proj.k_scale`, `.v_proj.v_scale` (ModelOpt),
- `layers.N.self_attn.k_proj.output_scale`, `.v_proj.output_scale` (older compressed-tensors),
- `layers.N.self_attn.kv_scale` (deprecated: one scale for both).

A scale s means x ~ float(code) * s, the rule of our FP8 cache (`max_kernels.fp8_kv_cache`),
so it is used as it is. As in vLLM, the scales count only for an FP8 KV cache:
`--kv-cache-dtype fp8`, or `auto` when config.json's `kv_cache_scheme` says 8-bit float
(`resolve_kv_cache_dtype`); a cache of any other dtype ignores them, with one log line.
A layer with only one of the two scales uses it for both (vLLM's rule, made for the old
single `kv_scale`); a layer with none keeps 1.0. Only per-tensor scales are read: a scale
that is not a positive finite scalar (per-head `attn_head` scales included) is an error
naming its file and tensor.

The weights never see these tensors: `without_kv_cache_scales` takes them out of the
checkpoint before a weight adapter maps it.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch

from max.errors import MaxError
from max.kv_cache import KV_CACHE_DTYPES, PagedKVCache
from max.pipelines.lib.weights.checkpoint import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.quantization_config import quantization_entry

logger = logging.getLogger("max.pipelines")

_LAYER_ATTENTION = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(.+)$")
# What follows `layers.N.self_attn.` -> whose scale it is ("kv": keys' and values').
_SCALE_NAMES = {
    "k_scale": "k",
    "v_scale": "v",
    "attn.k_scale": "k",
    "attn.v_scale": "v",
    "k_proj.k_scale": "k",
    "v_proj.v_scale": "v",
    "k_proj.output_scale": "k",
    "v_proj.output_scale": "v",
    "kv_scale": "kv",
    "attn.kv_scale": "kv",
}


def kv_scale_role(name: str) -> tuple[int, str] | None:
    """(decoder layer, "k" / "v" / "kv") of a KV cache scale tensor's name; None for any
    other tensor."""
    match = _LAYER_ATTENTION.search(name)
    if match is None or match.group(2) not in _SCALE_NAMES:
        return None
    return int(match.group(1)), _SCALE_NAMES[match.group(2)]


def without_kv_cache_scales(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint minus its KV cache scales (the KV cache reads them, not the model)."""
    if not any(kv_scale_role(name) for name in checkpoint):
        return checkpoint
    return {name: t for name, t in checkpoint.items() if kv_scale_role(name) is None}


def resolve_kv_cache_dtype(requested: str, hf_config: Any) -> str:
    """The `--kv-cache-dtype` this checkpoint runs with: `auto` is "fp8" when config.json's
    quantization_config has an 8-bit float `kv_cache_scheme` (compressed-tensors), as vLLM
    resolves it; any other value stays as asked. Raises MaxError, before any weight is read,
    for an FP8 cache over a scheme whose scales we cannot read (not one per tensor)."""
    scheme = (quantization_entry(hf_config) or {}).get("kv_cache_scheme")
    if not scheme:
        return requested
    fp8 = str(scheme.get("type")) == "float" and int(scheme.get("num_bits") or 0) == 8
    if requested == "auto":
        if not fp8:
            logger.warning(
                "config.json's kv_cache_scheme (%s, %s bits) is not an FP8 cache: the KV cache keeps the model's dtype",
                scheme.get("type"), scheme.get("num_bits"),
            )  # fmt: skip
            return requested
        logger.info("--kv-cache-dtype auto: fp8, as config.json's kv_cache_scheme says")
        requested = "fp8"
    strategy = scheme.get("strategy") or "tensor"
    if KV_CACHE_DTYPES.get(requested) == torch.float8_e4m3fn and strategy != "tensor":
        raise MaxError(
            f"config.json's kv_cache_scheme has strategy {strategy!r}: only one KV cache scale per layer "
            "(strategy 'tensor') is read; pass --kv-cache-dtype bfloat16 (or the model's dtype) to run "
            "without the checkpoint's scales"
        )
    return requested


def _scale_value(tensor: CheckpointTensor) -> float:
    """The tensor's scale, checked to be one positive finite number."""
    if math.prod(tensor.shape) != 1:
        raise MaxError(
            f"{tensor.source}: KV cache scale {tensor.name!r} has shape {tuple(tensor.shape)}; only one scale "
            "per layer's keys or values is supported (not per-head scales): pass --kv-cache-dtype bfloat16 "
            "(or the model's dtype) to run without them"
        )
    value = float(tensor.load(torch.float32).reshape(()).item())
    if not (math.isfinite(value) and value > 0.0):
        raise MaxError(
            f"{tensor.source}: KV cache scale {tensor.name!r} is {value}; a scale must be a positive finite number"
        )
    return value


def read_kv_cache_scales(checkpoint: Checkpoint, num_layers: int) -> dict[int, tuple[float, float]]:
    """(key scale, value scale) of each layer below `num_layers` that the checkpoint gives
    scales for (one given: both). Raises MaxError naming the file and tensor of a scale that
    is not a positive finite scalar."""
    found: dict[int, dict[str, float]] = {}
    for name, tensor in checkpoint.items():
        role = kv_scale_role(name)
        if role is None:
            continue
        layer, which = role
        if layer >= num_layers:  # e.g. a multi-token-prediction layer without a KV cache here
            logger.info("KV cache scale %r ignored: the model caches %d layers", name, num_layers)
            continue
        value = _scale_value(tensor)
        for part in ("k", "v") if which == "kv" else (which,):
            found.setdefault(layer, {})[part] = value
    out = {}
    for layer, parts in found.items():
        k, v = parts.get("k"), parts.get("v")
        out[layer] = (k if k is not None else v, v if v is not None else k)
    return out


def load_kv_cache_scales(kv_cache: PagedKVCache, checkpoint: Checkpoint) -> int:
    """Copies the checkpoint's KV cache scales into an FP8 cache's per-layer scales (other
    dtypes ignore them, logged once). Returns the number of layers that took scales."""
    names = [name for name in checkpoint if kv_scale_role(name) is not None]
    if not names:
        return 0
    dtype = kv_cache.params.dtype
    if dtype != torch.float8_e4m3fn:
        logger.info(
            "the checkpoint's %d KV cache scales are ignored: the KV cache holds %s (--kv-cache-dtype fp8 uses them)",
            len(names), str(dtype).removeprefix("torch."),
        )  # fmt: skip
        return 0
    scales = read_kv_cache_scales(checkpoint, kv_cache.params.num_layers)
    for layer, (k, v) in scales.items():
        # In place: the cache's scale tensors are what the kernels (and CUDA graphs) read.
        kv_cache.k_scales[layer].fill_(k)
        kv_cache.v_scales[layer].fill_(v)
    if scales:
        ks = [k for k, _ in scales.values()]
        vs = [v for _, v in scales.values()]
        logger.info(
            "FP8 KV cache: the checkpoint's scales for %d of %d layers (keys %.3g..%.3g, values %.3g..%.3g); others 1.0",
            len(scales), kv_cache.params.num_layers, min(ks), max(ks), min(vs), max(vs),
        )  # fmt: skip
    return len(scales)
