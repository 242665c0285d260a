"""Tiny gpt-oss checkpoints with MXFP4 experts, as OpenAI publishes gpt-oss.

`write_mxfp4_experts` rewrites a tiny checkpoint written by `write_tiny_checkpoint`: each
layer's stacked expert weights (transformers' [E, in, out] layout) are quantized to MXFP4
and stored as `*_blocks` and `*_scales` in the original [E, out, in] layout, and config.json
gets the `quantization_config` that makes transformers decode them on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from max.pipelines.lib.weights.mxfp4 import FP4_VALUES

_EXPERT_WEIGHTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def encode_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks uint8 [..., cols / 32, 16], scales uint8 [..., cols / 32]) of w [..., cols]:
    per block of 32, the smallest power-of-two scale that fits the largest magnitude in
    FP4's range (6), each value rounded to the nearest FP4 value."""
    groups = w.float().unflatten(-1, (-1, 32))
    peak = groups.abs().amax(-1, keepdim=True).clamp(min=2.0**-100)
    exponent = torch.ceil(torch.log2(peak / 6.0)).clamp(-127, 127)
    lut = torch.tensor(FP4_VALUES)
    codes = (torch.ldexp(groups, -exponent)[..., None] - lut).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent.squeeze(-1) + 127).to(torch.uint8)


def write_mxfp4_experts(directory: Path) -> Path:
    """Turns the tiny gpt-oss checkpoint in `directory` into its MXFP4 form, in place."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    for name in list(tensors):
        if name.endswith(_EXPERT_WEIGHTS):
            stored = tensors.pop(name).transpose(1, 2).contiguous()  # [E, out, in]
            tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = encode_mxfp4(stored)
    save_file(tensors, str(path), metadata={"format": "pt"})
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    }
    config_path.write_text(json.dumps(config, indent=2))
    return directory
