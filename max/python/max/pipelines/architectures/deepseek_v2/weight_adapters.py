"""DeepSeek-V2 checkpoint names -> model names, with the rotary parts of the query and
shared key projections reordered from interleaved pairs to `max.nn`'s "rotate half"."""

from __future__ import annotations

from typing import Any

import torch

from max.pipelines.lib import Checkpoint, CheckpointTensor
from max.pipelines.lib.weights.gguf_names import rename_gguf
from max.pipelines.lib.weights.hf_names import hf_to_model_names

# llama.cpp's deepseek2 block tensors that the Llama table does not name.
_GGUF_BLOCK_NAMES = {
    "attn_q_a": "self_attn.q_a_proj",
    "attn_q_a_norm": "self_attn.q_a_layernorm",
    "attn_q_b": "self_attn.q_b_proj",
    "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
    "attn_kv_a_norm": "self_attn.kv_a_layernorm",
    "attn_kv_b": "self_attn.kv_b_proj",
    "attn_k_b": "self_attn.k_b_proj",
    "attn_v_b": "self_attn.v_b_proj",
    "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj",
    "ffn_down_shexp": "mlp.shared_experts.down_proj",
}


def _rope_rows_to_halves(w: torch.Tensor, period: int, start: int, rope: int) -> torch.Tensor:
    """w whose rows, in blocks of `period`, have their rotary rows [start, start + rope)
    reordered from pairs (0, 1), (2, 3)... to halves (0, 2, 4, ..., 1, 3, 5, ...)."""
    order = torch.cat((torch.arange(0, rope, 2), torch.arange(1, rope, 2))) + start
    rows = torch.arange(w.shape[0]).view(-1, period)
    rows[:, start : start + rope] = rows[:, order]
    return w[rows.flatten()]


def _rope_halves(named: Checkpoint, hf_config: Any) -> Checkpoint:
    """The query's rows per head are [nope | rope], the shared key projection's
    [latent | rope]: their rope rows are reordered."""
    nope, rope, rank = hf_config.qk_nope_head_dim, hf_config.qk_rope_head_dim, hf_config.kv_lora_rank
    out = dict(named)
    for name, tensor in out.items():
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
            out[name] = tensor.transformed(lambda w: _rope_rows_to_halves(w, nope + rope, nope, rope))
        elif name.endswith(("self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_a_proj_with_mqa.bias")):
            out[name] = tensor.transformed(lambda w: _rope_rows_to_halves(w, rank + rope, rank, rope))
    return out


def _joined_kv_b(k_b: CheckpointTensor, v_b: CheckpointTensor) -> CheckpointTensor:
    """kv_b_proj [heads * (nope + v), rank] from llama.cpp's split of it: k_b [heads, rank,
    nope] (transposed per head, for the absorbed product) and v_b [heads, v, rank]."""
    heads, rank, nope = k_b.shape
    v = v_b.shape[1]

    def read(dtype: torch.dtype) -> torch.Tensor:
        return torch.cat((k_b.load(dtype).transpose(1, 2), v_b.load(dtype)), dim=1).reshape(-1, rank)

    return CheckpointTensor(k_b.name.replace("attn_k_b", "attn_kv_b"), (heads * (nope + v), rank), k_b.source, read, k_b.encoding)


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.`, rope rows reordered."""
    return _rope_halves(hf_to_model_names(checkpoint, hf_config), hf_config)


def convert_gguf_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """llama.cpp names (no Q/K permutation for deepseek2: the file's rows are the Hugging Face
    ones), stacked experts one by one, and kv_b joined back where the file splits it."""
    out = dict(rename_gguf(checkpoint, _GGUF_BLOCK_NAMES))
    for name in [n for n in out if n.endswith("self_attn.k_b_proj.weight")]:
        base = name.removesuffix("k_b_proj.weight")
        out[base + "kv_b_proj.weight"] = _joined_kv_b(out.pop(name), out.pop(base + "v_b_proj.weight"))
    return _rope_halves(out, hf_config)
