"""The config fields of GGUF architectures whose metadata does not map one key to one field.

`gguf_config` reads the keys every architecture shares; each function here then fixes up
the Hugging Face config fields of one architecture, as llama.cpp's converter wrote them:

- phi3: the rotary width (`rope.dimension_count`) is a fraction of the head; LongRoPE's
  factors are stored as two tensors (`rope_factors_long` / `_short`), not as metadata; a
  sliding window of 0 means none.
- deepseek2: the file describes latent attention as multi-query attention over the latent
  (`head_count_kv` 1, `key_length` = kv_lora_rank + rope width); the per-head widths are in
  the `_mla` keys (older files: in `key_length` / `value_length` themselves); routing
  fields have their own keys; YaRN's mscale is stored as 0.1 * mscale_all_dim.
- qwen3moe: no key says whether the top-k routing weights are renormalized; llama.cpp always
  renormalizes them for this architecture (transformers' default is not to).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from max.errors import MaxError
from max.pipelines.lib.weights.gguf_dequant import dequantize
from max.pipelines.lib.weights.gguf_reader import GGUFFile

# llama.cpp's expert gating functions (`expert_gating_func`): DeepSeek-V2 routes by softmax.
_GATING_SOFTMAX = 1


def _vector(gguf: GGUFFile, name: str) -> list[float] | None:
    """A small float tensor of the file as a list, or None if the file has none; each float32
    value as the shortest decimal that rounds to it (the config's own 1.1, not 1.10000002)."""
    info = gguf.tensors.get(name)
    if info is None:
        return None
    values = dequantize(gguf.tensor_bytes(name), info, torch.float32, str(gguf.path)).flatten().numpy()
    return [float(str(np.float32(v))) for v in values]


def _phi3(gguf: GGUFFile, kwargs: dict[str, Any]) -> None:
    head_dim = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    rope_dims = gguf.field("{arch}.rope.dimension_count")
    if rope_dims:
        kwargs["partial_rotary_factor"] = int(rope_dims) / head_dim
    original = gguf.field("{arch}.rope.scaling.original_context_length")
    if original:
        kwargs["original_max_position_embeddings"] = int(original)
    if not kwargs.get("sliding_window"):
        kwargs["sliding_window"] = None
    long, short = _vector(gguf, "rope_factors_long.weight"), _vector(gguf, "rope_factors_short.weight")
    if long is not None and short is not None:
        # The attention factor is left to transformers: llama.cpp stores the default it derives.
        kwargs["rope_scaling"] = {"rope_type": "longrope", "long_factor": long, "short_factor": short}
    else:
        kwargs.pop("rope_scaling", None)


def _deepseek2(gguf: GGUFFile, kwargs: dict[str, Any]) -> None:
    def field(key: str, default: Any = None) -> Any:
        return gguf.field("{arch}." + key, default)

    if int(field("expert_gating_func", _GATING_SOFTMAX)) != _GATING_SOFTMAX:
        raise MaxError(f"{gguf.path}: deepseek2 with sigmoid expert gating (DeepSeek-V3) is not supported")
    rope = int(field("rope.dimension_count"))
    key = field("attention.key_length_mla", field("attention.key_length"))
    value = field("attention.value_length_mla", field("attention.value_length"))
    q_lora = field("attention.q_lora_rank")
    groups = int(field("expert_group_count", 1))
    kwargs.pop("head_dim", None)  # the latent's width, not a head's
    kwargs.pop("num_experts", None)
    kwargs.update(
        num_key_value_heads=kwargs["num_attention_heads"],
        kv_lora_rank=int(field("attention.kv_lora_rank")),
        q_lora_rank=int(q_lora) if q_lora else None,
        qk_rope_head_dim=rope,
        qk_nope_head_dim=int(key) - rope,
        v_head_dim=int(value),
        n_routed_experts=int(field("expert_count", 0)) or None,
        n_shared_experts=int(field("expert_shared_count", 0)),
        first_k_dense_replace=int(field("leading_dense_block_count", 0)),
        routed_scaling_factor=float(field("expert_weights_scale", 1.0)),
        norm_topk_prob=bool(field("expert_weights_norm", False)),
        n_group=groups,
        topk_group=int(field("expert_group_used_count", 1)),
        topk_method="group_limited_greedy" if groups > 1 else "greedy",
    )
    scaling = kwargs.get("rope_scaling")
    if scaling and scaling.get("rope_type") == "yarn":
        log_mul = field("rope.scaling.yarn_log_multiplier")
        if log_mul:
            # Stored as float32 0.1 * mscale_all_dim (and mscale equal to it, which llama.cpp
            # assumes); rounded back to the config's decimal value.
            mscale = round(float(log_mul) / 0.1, 6)
            scaling.update(mscale=mscale, mscale_all_dim=mscale)
        for name in ("beta_fast", "beta_slow"):
            beta = field(f"rope.scaling.yarn_{name}")
            if beta is not None:
                scaling[name] = float(beta)


def _qwen3moe(gguf: GGUFFile, kwargs: dict[str, Any]) -> None:
    kwargs["norm_topk_prob"] = True


ARCHITECTURE_FIELDS: dict[str, Callable[[GGUFFile, dict[str, Any]], None]] = {
    "phi3": _phi3,
    "deepseek2": _deepseek2,
    "qwen3moe": _qwen3moe,
}
