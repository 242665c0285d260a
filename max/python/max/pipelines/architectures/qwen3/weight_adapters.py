"""Qwen3 checkpoint names -> model names."""

from __future__ import annotations

import re
from typing import Any

import torch

from max.pipelines.lib import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names

# llama.cpp stacks the experts of a layer into one 3-D tensor per projection.
_STACKED = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.` (experts are stored one by one)."""
    return hf_to_model_names(checkpoint, hf_config)


def _split_experts(tensor: CheckpointTensor) -> list[CheckpointTensor]:
    """One [out, in] tensor per expert of a stacked [experts, out, in] one, which is decoded
    once and shared rather than once per expert."""
    cache: dict[torch.dtype, torch.Tensor] = {}

    def stacked(dtype: torch.dtype) -> torch.Tensor:
        if dtype not in cache:
            cache.clear()
            cache[dtype] = tensor.load(dtype)
        return cache[dtype]

    experts, *shape = tensor.shape
    return [
        CheckpointTensor(tensor.name, tuple(shape), tensor.source, lambda dtype, e=e: stacked(dtype)[e])
        for e in range(experts)
    ]


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names (Q and K are not permuted for qwen3); stacked experts split."""
    out = dict(rename_gguf({n: t for n, t in checkpoint.items() if not _STACKED.match(n)}))
    for name, tensor in checkpoint.items():
        m = _STACKED.match(name)
        if m:
            layer, proj = m.groups()
            for e, part in enumerate(_split_experts(tensor)):
                out[f"layers.{layer}.mlp.experts.{e}.{proj}_proj.weight"] = part
    return out
