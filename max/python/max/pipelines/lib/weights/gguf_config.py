"""A Hugging Face config built from a GGUF file's metadata.

llama.cpp's key names are mapped to the fields of the matching transformers config class,
and that class fills in every default, so a model loaded from GGUF reads its config exactly
as transformers would (e.g. Gemma 3's local rope base and sliding-window pattern, which
the file does not store).
"""

from __future__ import annotations

from typing import Any

from max.errors import MaxError
from max.pipelines.lib.weights.gguf_arch_config import ARCHITECTURE_FIELDS
from max.pipelines.lib.weights.gguf_reader import GGUFFile

# GGUF architecture -> (transformers model_type, architecture class name).
GGUF_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "olmo2": ("olmo2", "Olmo2ForCausalLM"),
    "deepseek2": ("deepseek_v2", "DeepseekV2ForCausalLM"),
}

# llama.cpp key (with {arch}) -> Hugging Face config field.
_FIELDS = {
    "{arch}.block_count": "num_hidden_layers",
    "{arch}.context_length": "max_position_embeddings",
    "{arch}.embedding_length": "hidden_size",
    "{arch}.feed_forward_length": "intermediate_size",
    "{arch}.attention.head_count": "num_attention_heads",
    "{arch}.attention.head_count_kv": "num_key_value_heads",
    "{arch}.attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "{arch}.attention.key_length": "head_dim",
    "{arch}.attention.sliding_window": "sliding_window",
    "{arch}.expert_count": "num_experts",
    "{arch}.expert_used_count": "num_experts_per_tok",
    "{arch}.expert_feed_forward_length": "moe_intermediate_size",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}


def gguf_config_kwargs(gguf: GGUFFile) -> tuple[str, dict[str, Any]]:
    """(model_type, config fields) read from the file's metadata."""
    arch = gguf.architecture
    if arch not in GGUF_ARCHITECTURES:
        raise MaxError(
            f"{gguf.path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(GGUF_ARCHITECTURES))})"
        )
    model_type, class_name = GGUF_ARCHITECTURES[arch]
    kwargs: dict[str, Any] = {"architectures": [class_name]}
    for key, field in _FIELDS.items():
        value = gguf.field(key)
        if value is not None:
            kwargs[field] = value.item() if hasattr(value, "item") else value
    vocab = gguf.field("{arch}.vocab_size")
    if vocab is None and "tokenizer.ggml.tokens" in gguf.metadata:
        vocab = len(gguf.metadata["tokenizer.ggml.tokens"])
    if vocab is not None:
        kwargs["vocab_size"] = int(vocab)
    rope: dict[str, Any] = {"rope_theta": float(gguf.field("{arch}.rope.freq_base", 10000.0))}
    scaling = gguf.field("{arch}.rope.scaling.type")
    if scaling and scaling != "none":
        rope["rope_type"] = scaling
        rope["factor"] = float(gguf.field("{arch}.rope.scaling.factor", 1.0))
        original = gguf.field("{arch}.rope.scaling.original_context_length")
        if original:
            rope["original_max_position_embeddings"] = int(original)
    kwargs["rope_theta"] = rope["rope_theta"]
    if "rope_type" in rope:
        kwargs["rope_scaling"] = {"rope_type": rope["rope_type"], **rope}
    kwargs["tie_word_embeddings"] = "output.weight" not in gguf.tensors
    if arch == "gemma3":
        # The file does not store Gemma's rope base of local layers; transformers' default
        # (10000) applies, as it does when transformers itself reads a Gemma 3 GGUF.
        kwargs.pop("rope_scaling", None)
    if arch in ARCHITECTURE_FIELDS:
        ARCHITECTURE_FIELDS[arch](gguf, kwargs)
    return model_type, kwargs


def gguf_hf_config(gguf: GGUFFile):
    """A transformers `PretrainedConfig` for the model in the GGUF file."""
    from transformers import AutoConfig

    model_type, kwargs = gguf_config_kwargs(gguf)
    return AutoConfig.for_model(model_type, **kwargs)
