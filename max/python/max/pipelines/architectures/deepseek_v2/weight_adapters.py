"""DeepSeek-V2 checkpoint names -> model names, with the rotary parts of the query and
shared key projections reordered from interleaved pairs to `max.nn`'s "rotate half"."""

from __future__ import annotations

from typing import Any

import torch

from max.pipelines.lib import Checkpoint
from max.pipelines.lib.weights.hf_names import hf_to_model_names


def _rope_rows_to_halves(w: torch.Tensor, period: int, start: int, rope: int) -> torch.Tensor:
    """w whose rows, in blocks of `period`, have their rotary rows [start, start + rope)
    reordered from pairs (0, 1), (2, 3)... to halves (0, 2, 4, ..., 1, 3, 5, ...)."""
    order = torch.cat((torch.arange(0, rope, 2), torch.arange(1, rope, 2))) + start
    rows = torch.arange(w.shape[0]).view(-1, period)
    rows[:, start : start + rope] = rows[:, order]
    return w[rows.flatten()]


def convert_safetensor_state_dict(checkpoint: Checkpoint, hf_config: Any) -> Checkpoint:
    """Hugging Face names minus `model.`; the query's rows per head are [nope | rope], the
    shared key projection's [latent | rope]: their rope rows are reordered."""
    nope, rope, rank = hf_config.qk_nope_head_dim, hf_config.qk_rope_head_dim, hf_config.kv_lora_rank
    out = dict(hf_to_model_names(checkpoint, hf_config))
    for name, tensor in out.items():
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
            out[name] = tensor.transformed(lambda w: _rope_rows_to_halves(w, nope + rope, nope, rope))
        elif name.endswith(("self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_a_proj_with_mqa.bias")):
            out[name] = tensor.transformed(lambda w: _rope_rows_to_halves(w, rank + rope, rank, rope))
    return out
