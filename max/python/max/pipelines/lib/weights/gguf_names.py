"""llama.cpp's tensor names, mapped to the module names of `max.nn` decoders.

GGUF files name tensors `blk.N.attn_q.weight` etc. whatever the architecture; this table
covers the Llama family (Llama, Qwen2/3, Qwen3-MoE), the extra norms of Gemma 3 and OLMo 2;
architectures add their own block names (`block_overrides`). llama.cpp stacks a layer's
routed experts into one [experts, out, in] tensor per projection (`ffn_gate_exps`...):
`rename_gguf` hands them out one expert at a time, each read from its own slice.
"""

from __future__ import annotations

import re

from max.errors import MaxError
from max.pipelines.lib.weights.checkpoint import Checkpoint
from max.pipelines.lib.weights.stacked_experts import unstack_experts

_GLOBAL = {
    "token_embd": "embed_tokens",
    "output_norm": "norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    # Gemma 3's sandwich norms.
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_STACKED_EXPERTS = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")


def gguf_to_model_name(name: str, block_overrides: dict[str, str] | None = None) -> str | None:
    """The model parameter name of a GGUF tensor, or None if it is not a parameter."""
    m = _BLOCK_RE.match(name)
    if m:
        layer, kind, suffix = m.groups()
        table = {**_BLOCK, **(block_overrides or {})}
        if kind not in table:
            return None
        return f"layers.{layer}.{table[kind]}.{suffix}"
    base, _, suffix = name.rpartition(".")
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    return None


def rename_gguf(checkpoint: Checkpoint, block_overrides: dict[str, str] | None = None) -> dict:
    """The checkpoint under model names; tensors that are not parameters (e.g. rope
    frequency tables) are dropped, unknown block tensors are an error."""
    out = {}
    for name, tensor in checkpoint.items():
        stacked = _STACKED_EXPERTS.match(name)
        if stacked:
            layer, proj = stacked.groups()
            for e, parts in enumerate(unstack_experts(tensor, {"w": lambda w: w})):
                out[f"layers.{layer}.mlp.experts.{e}.{proj}_proj.weight"] = parts["w"]
            continue
        target = gguf_to_model_name(name, block_overrides)
        if target is None:
            if name.startswith("blk."):
                raise MaxError(f"{tensor.source}: GGUF tensor {name!r} is not understood by this architecture")
            continue
        out[target] = tensor
    return out
