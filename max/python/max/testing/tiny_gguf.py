"""Writing GGUF files the way llama.cpp's converter does, for tests of the GGUF path.

Given a tiny Hugging Face checkpoint (see `tiny_checkpoints`), writes the same weights as
a GGUF file: llama.cpp tensor names, Q and K rows permuted for llama-architecture files,
norms kept in float32, matrices in the requested GGML type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of Q/K rows (the inverse of what loaders undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face Llama tensor."""
    name = hf_name.removeprefix("model.")
    if name.startswith("layers."):
        _, layer, rest = name.split(".", 2)
        module, _, suffix = rest.rpartition(".")
        return f"blk.{layer}.{_NAMES[module]}.{suffix}"
    return {
        "embed_tokens.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }[name]


def write_llama_gguf(
    checkpoint_dir: Path, out: Path, matrix_type: str = "F32", tensor_types: dict[str, str] | None = None
) -> Path:
    """Converts a tiny Llama checkpoint to GGUF (`matrix_type`: F32, F16, Q8_0, Q4_0...;
    `tensor_types`: another type for some kinds of matrix, e.g. {"ffn_down": "Q6_K"} as a
    Q4_K_M file mixes them)."""
    import gguf
    from safetensors.torch import load_file

    config = json.loads((checkpoint_dir / "config.json").read_text())
    tensors = load_file(str(checkpoint_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_uint32("llama.block_count", config["num_hidden_layers"])
    writer.add_uint32("llama.context_length", config["max_position_embeddings"])
    writer.add_uint32("llama.embedding_length", config["hidden_size"])
    writer.add_uint32("llama.feed_forward_length", config["intermediate_size"])
    writer.add_uint32("llama.attention.head_count", config["num_attention_heads"])
    writer.add_uint32("llama.attention.head_count_kv", config["num_key_value_heads"])
    # transformers 5 writes the rope base inside `rope_parameters`, older versions at the top.
    rope_theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    writer.add_float32("llama.rope.freq_base", rope_theta)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    writer.add_uint32("llama.vocab_size", config["vocab_size"])
    writer.add_uint32("tokenizer.ggml.bos_token_id", config.get("bos_token_id", 1))
    writer.add_uint32("tokenizer.ggml.eos_token_id", config.get("eos_token_id", 2))
    for name, tensor in tensors.items():
        kind = gguf_name(name).split(".")[-2]
        matrix_type_here = (tensor_types or {}).get(kind, matrix_type)
        qtype = gguf.GGMLQuantizationType[matrix_type_here]
        data = tensor.to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            data = _permute(data, config["num_key_value_heads"])
        if data.ndim == 2 and matrix_type_here == "F16":
            writer.add_tensor(gguf_name(name), data.astype(np.float16))
        elif data.ndim == 2 and matrix_type_here != "F32":
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
