"""gpt-oss checkpoint names -> model names.

transformers' gpt-oss checkpoints (e.g. unsloth/gpt-oss-20b-BF16) stack each layer's
experts: `mlp.experts.gate_up_proj` [E, H, 2I] (applied as x @ W, gate and up interleaved:
columns 0, 2, 4... are the gate), `gate_up_proj_bias` [E, 2I] (interleaved likewise),
`down_proj` [E, I, H] and `down_proj_bias` [E, H]; the router is `mlp.router`. OpenAI's
original checkpoints store the two expert weights in MXFP4 instead (`*_blocks` and
`*_scales`, [out, in] per expert). Both are split here into the per-expert [out, in]
tensors that `max.nn.SparseMoE`'s float experts read (gate and up de-interleaved; MXFP4
decoded); MXFP4 experts are also offered packed, as stored, for its packed experts.
"""

from __future__ import annotations

import re
from typing import Any

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.hf_names import hf_to_model_names
from max.pipelines.lib.weights.mxfp4 import BLOCKS_SUFFIX, SCALES_SUFFIX, decode_mxfp4_pairs
from max.pipelines.lib.weights.stacked_experts import ExpertView, unstack_experts

_STACKED = re.compile(r"^(layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)(_bias)?$")


def _views(proj: str, is_bias: bool, in_out: bool) -> dict[str, ExpertView]:
    """Per-expert views of a stacked tensor, as [out, in] weights and [out] biases; `in_out`:
    the weights are stored [in, out]. Gate and up are the even and odd rows."""
    orient = (lambda t: t.T) if in_out and not is_bias else (lambda t: t)
    kind = "bias" if is_bias else "weight"
    if proj == "gate_up_proj":
        return {f"gate_proj.{kind}": lambda t: orient(t)[0::2], f"up_proj.{kind}": lambda t: orient(t)[1::2]}
    return {f"down_proj.{kind}": orient}


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.`; the router renamed `mlp.gate`; stacked experts
    split into per-expert projections. MXFP4 experts are offered in both forms, each
    optional: packed as stored (with their stacked biases), which `max.nn`'s packed experts
    read, and decoded per expert, which its float experts read."""
    named = hf_to_model_names(checkpoint, hf_config)
    packed = any(name.endswith(BLOCKS_SUFFIX) for name in named)
    out = {}
    if packed:
        for name, tensor in named.items():
            if name.endswith((BLOCKS_SUFFIX, SCALES_SUFFIX)) or _STACKED.match(name):
                out[name] = tensor.as_optional()
    for name, tensor in decode_mxfp4_pairs(named).items():
        m = _STACKED.match(name)
        if m is None:
            out[name.replace(".mlp.router.", ".mlp.gate.")] = tensor
            continue
        prefix, proj, bias = m.groups()
        # MXFP4 weights are stored [out, in] per expert, bfloat16 ones [in, out].
        views = _views(proj, bias is not None, in_out=tensor.encoding != "mxfp4")
        for e, parts in enumerate(unstack_experts(tensor, views)):
            for view_name, part in parts.items():
                out[f"{prefix}.{e}.{view_name}"] = part.as_optional() if packed else part
    return out
