"""GGUF files of tiny Phi-3, OLMo 2, DeepSeek-V2, Qwen3 and Qwen3-MoE checkpoints, written
as llama.cpp's converter writes them, and the safetensors checkpoint of exactly the weights
they hold.

Tensor names come from the `gguf` package's own table (`gguf.get_tensor_name_map`), so they
are llama.cpp's, not ours; a tensor the architecture has no name for (e.g. a dense MLP in a
Qwen3-MoE, every layer of which llama.cpp takes as sparse) is an error, as in the converter.
As the converter does: Phi-3 keeps `qkv_proj` / `gate_up_proj` fused and stores LongRoPE's
factors as tensors; DeepSeek-V2 and Qwen3-MoE stack each layer's experts into one tensor per
projection; DeepSeek-V2 splits `kv_b_proj` into `k_b` (transposed per head) and `v_b`, and
describes its latent attention as one KV head of kv_lora_rank + rope width; an explicit
`head_dim` is written as the key and value lengths, YaRN as its scaling type, factor and
original context. Vectors stay float32; matrices take `matrix_type`, or float16 where their
rows are not whole blocks (llama.cpp's fallback).

`write_gguf_and_reference` also writes the reference: the same config with every weight
replaced by what the GGUF file decodes to (the file's rounding undone through the same
transposes), so a GGUF load must equal the reference's safetensors load to float32 rounding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

ARCHES = {
    "Phi3ForCausalLM": "PHI3",
    "Olmo2ForCausalLM": "OLMO2",
    "DeepseekV2ForCausalLM": "DEEPSEEK2",
    "Qwen3ForCausalLM": "QWEN3",
    "Qwen3MoeForCausalLM": "QWEN3MOE",
}


def _float(x: np.ndarray, matrix_type: str):
    """(what to write, its GGML type or None for numpy's own, the values it decodes to)."""
    import gguf

    if x.ndim == 1 or matrix_type == "F32":
        return x, None, x
    qtype = gguf.GGMLQuantizationType[matrix_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if matrix_type == "F16" or x.shape[-1] % block:
        half = x.astype(np.float16)
        return half, None, half.astype(np.float32)
    raw = gguf.quants.quantize(x, qtype)
    return raw, qtype, gguf.quants.dequantize(raw, qtype).reshape(x.shape)


def _rope_parameters(c: dict) -> dict:
    """The rotary settings of a config.json (transformers 5 writes `rope_parameters`)."""
    return c.get("rope_parameters") or c.get("rope_scaling") or {}


def _is_yarn(rope_parameters: dict) -> bool:
    return rope_parameters.get("rope_type", rope_parameters.get("type")) == "yarn"


def _expert_count(c: dict) -> int:
    """Routed experts per layer (transformers 5 saves Qwen3-MoE's `num_experts` as
    `num_local_experts`)."""
    return c.get("n_routed_experts") or c.get("num_local_experts") or c["num_experts"]


def _metadata(writer, arch: str, c: dict) -> None:
    """llama.cpp's metadata keys for the config `c`."""
    import gguf

    heads = c["num_attention_heads"]
    rope_parameters = _rope_parameters(c)
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c["max_position_embeddings"])
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(heads)
    if arch != "DEEPSEEK2":  # which describes its latent attention as one KV head (below)
        writer.add_head_count_kv(c.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(rope_parameters.get("rope_theta", c.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(c["rms_norm_eps"])
    writer.add_vocab_size(c["vocab_size"])
    writer.add_bos_token_id(c["bos_token_id"])
    writer.add_eos_token_id(c["eos_token_id"])
    if c.get("head_dim") and arch != "DEEPSEEK2":
        writer.add_key_length(c["head_dim"])
        writer.add_value_length(c["head_dim"])
    if _is_yarn(rope_parameters):
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope_parameters["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope_parameters["original_max_position_embeddings"])
    if arch == "QWEN3MOE":
        writer.add_expert_count(_expert_count(c))
        writer.add_expert_used_count(c["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
    if arch == "PHI3":
        writer.add_rope_dimension_count(int(c.get("partial_rotary_factor", 1.0) * c["hidden_size"]) // heads)
        writer.add_rope_scaling_orig_ctx_len(c.get("original_max_position_embeddings", c["max_position_embeddings"]))
        writer.add_sliding_window(c.get("sliding_window") or 0)
    if arch == "DEEPSEEK2":
        rank, rope = c["kv_lora_rank"], c["qk_rope_head_dim"]
        writer.add_head_count_kv(1)
        writer.add_leading_dense_block_count(c["first_k_dense_replace"])
        if c.get("q_lora_rank"):
            writer.add_q_lora_rank(c["q_lora_rank"])
        writer.add_kv_lora_rank(rank)
        writer.add_key_length(rank + rope)
        writer.add_value_length(rank)
        writer.add_key_length_mla(c["qk_nope_head_dim"] + rope)
        writer.add_value_length_mla(c["v_head_dim"])
        writer.add_expert_feed_forward_length(c["moe_intermediate_size"])
        writer.add_expert_count(c["n_routed_experts"])
        writer.add_expert_used_count(c["num_experts_per_tok"])
        writer.add_expert_shared_count(c["n_shared_experts"])
        writer.add_expert_weights_scale(c["routed_scaling_factor"])
        writer.add_expert_group_count(c.get("n_group", 1))
        writer.add_expert_group_used_count(c.get("topk_group", 1))
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
        writer.add_rope_dimension_count(rope)
        if _is_yarn(rope_parameters):
            writer.add_rope_scaling_yarn_log_mul(0.1 * rope_parameters["mscale_all_dim"])


def _expert(name: str, names) -> tuple[str, int] | None:
    """(GGUF name of the stacked tensor, expert index) of a per-expert Hugging Face tensor
    (`model.layers.L.mlp.experts.E.P.weight`), None for any other."""
    parts = name.split(".")
    if parts[3:5] != ["mlp", "experts"]:
        return None
    stacked = f"model.layers.{parts[2]}.mlp.experts.{parts[6]}.weight"
    return names.get_name(stacked, try_suffixes=(".weight",)), int(parts[5])


def _gguf_tensors(tensors: dict[str, np.ndarray], arch: str, c: dict) -> tuple[dict, dict]:
    """({GGUF name: values}, {HF name of a split tensor: how to join its GGUF parts}) of a
    Hugging Face state dict, with experts stacked and DeepSeek's kv_b split."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], c["num_hidden_layers"])
    out, joins = {}, {}
    for name, x in tensors.items():
        expert = _expert(name, names)
        if expert is not None:
            if expert[1] == 0:
                experts = [name.replace(".experts.0.", f".experts.{e}.") for e in range(_expert_count(c))]
                out[expert[0]] = np.stack([tensors[n] for n in experts])
            continue
        if name.endswith("kv_b_proj.weight"):
            heads, nope, v = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"]
            kv_b = x.reshape(heads, nope + v, -1)
            k_name = names.get_name(name.replace("kv_b_proj", "k_b_proj"), try_suffixes=(".weight",))
            v_name = names.get_name(name.replace("kv_b_proj", "v_b_proj"), try_suffixes=(".weight",))
            out[k_name] = np.ascontiguousarray(kv_b[:, :nope].transpose(0, 2, 1))
            out[v_name] = np.ascontiguousarray(kv_b[:, nope:])
            joins[name] = (k_name, v_name)
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"{name}: llama.cpp's {arch} has no tensor for it")
        out[target] = x
    return out, joins


def _reference(tensors: dict[str, np.ndarray], decoded: dict[str, np.ndarray], joins: dict, arch: str, c: dict):
    """The Hugging Face state dict holding what the GGUF tensors decode to."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], c["num_hidden_layers"])
    out = {}
    for name, x in tensors.items():
        if name in joins:
            k_b, v_b = (decoded[n] for n in joins[name])
            out[name] = np.concatenate((k_b.transpose(0, 2, 1), v_b), axis=1).reshape(x.shape)
        elif _expert(name, names) is not None:
            stacked, e = _expert(name, names)
            out[name] = decoded[stacked][e]
        else:
            out[name] = decoded[names.get_name(name, try_suffixes=(".weight", ".bias"))]
    return {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in out.items()}


def write_gguf_and_reference(checkpoint_dir: Path, out: Path, matrix_type: str = "F32") -> tuple[Path, Path]:
    """Writes the tiny checkpoint at `checkpoint_dir` as the GGUF file `out`, and the
    reference checkpoint of the weights the file decodes to (see the module docstring)
    beside it; returns (GGUF path, reference folder)."""
    import gguf
    from safetensors.torch import load_file, save_file

    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    config = json.loads((checkpoint_dir / "config.json").read_text())
    arch = ARCHES[config["architectures"][0]]
    tensors = {n: t.to(torch.float32).numpy() for n, t in load_file(str(checkpoint_dir / "model.safetensors")).items()}
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]])
    _metadata(writer, arch, config)
    by_gguf, joins = _gguf_tensors(tensors, arch, config)
    decoded = {}
    for name, x in by_gguf.items():
        data, raw_dtype, decoded[name] = _float(x, matrix_type)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    scaling = _rope_parameters(config)
    if arch == "PHI3" and scaling.get("long_factor"):
        writer.add_tensor("rope_factors_long.weight", np.array(scaling["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(scaling["short_factor"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference = out.parent / f"{out.stem}-reference"
    reference.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint_dir / "config.json", reference / "config.json")
    save_file(_reference(tensors, decoded, joins, arch, config), str(reference / "model.safetensors"), metadata={"format": "pt"})
    return out, reference


def assert_gguf_matches_reference(checkpoint_dir: Path, tmp: Path, matrix_type: str, tolerance: float = 1e-5) -> None:
    """Our float32 logits of every prompt position, loading the GGUF file of the checkpoint,
    equal those of loading the reference safetensors (the weights the file decodes to)."""
    from max.testing.engine_probes import prompt_logits
    from max.testing.parity import PROMPTS, build_tiny_engine

    path, reference = write_gguf_and_reference(checkpoint_dir, Path(tmp) / f"tiny-{matrix_type}.gguf", matrix_type)
    from_gguf, expected = build_tiny_engine(path), build_tiny_engine(reference)
    for prompt in PROMPTS:
        torch.testing.assert_close(prompt_logits(from_gguf, prompt), prompt_logits(expected, prompt), rtol=tolerance, atol=tolerance)


def assert_gguf_matches_transformers(checkpoint_dir: Path, tmp: Path, matrix_type: str, tolerance: float = 1e-5) -> None:
    """Our float32 logits of every prompt position and greedy tokens, loading the GGUF file
    of the checkpoint, equal transformers' on the reference (the weights the file decodes
    to): checks the config read from the file's metadata, not only the tensors."""
    from max.testing.parity import assert_matches_transformers

    path, reference = write_gguf_and_reference(checkpoint_dir, Path(tmp) / f"tiny-{matrix_type}.gguf", matrix_type)
    assert_matches_transformers(reference, tolerance=tolerance, engine_path=path)
