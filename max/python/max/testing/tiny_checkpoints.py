"""Tiny random Hugging Face checkpoints, written locally from a config (no download).

A checkpoint is a folder with config.json, model.safetensors (random weights from a fixed
seed, made by transformers itself, so the reference model is exactly what it loads), and,
when asked, the tokenizer of the embedded SmolLM2 model so that text round-trips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from max.testing.tiny_gemma3_vl_processor import write_gemma3_processor_files
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir
from max.testing.tiny_vl_processor import write_vl_processor_files


def write_tiny_checkpoint(
    directory: Path,
    config: dict[str, Any],
    seed: int = 0,
    with_tokenizer: bool = False,
    dtype: torch.dtype = torch.float32,
    scale_norms: bool = True,
) -> Path:
    """Writes a random checkpoint of the architecture `config["architectures"][0]`.

    `config` holds config.json fields (model_type included). Norm weights are randomized
    too (scale_norms), so that a model that ignores a norm's weight cannot pass.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_model(config, seed, dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if scale_norms and "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif name.endswith("mm_input_projection_weight"):
                # transformers starts Gemma 3's image projection at zero: images would vanish.
                param.copy_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(directory), safe_serialization=True)
    # transformers writes the architectures of the class it instantiated; keep the config's
    # own name (a custom class name, e.g. for --custom-architectures tests).
    cfg_path = directory / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["architectures"] = list(config["architectures"])
    cfg_path.write_text(json.dumps(saved, indent=2))
    if with_tokenizer and config.get("model_type") == "gemma3":
        write_gemma3_processor_files(directory, config)  # Gemma's image tokens and processor
    elif with_tokenizer and "vision_config" in config:
        write_vl_processor_files(directory)  # the tokenizer plus image tokens and processor
    elif with_tokenizer:
        import shutil

        for f in tokenizer_dir().iterdir():
            shutil.copy(f, directory / f.name)
    return directory


def reference_class(architecture: str):
    """transformers' class named `architecture` (vision-language ones are not causal LMs to
    its Auto classes), or AutoModelForCausalLM for names it does not know."""
    import transformers

    cls = getattr(transformers, architecture, None)
    return cls if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) else transformers.AutoModelForCausalLM


def reference_from_config(hf_config: Any, **kwargs: Any):
    """transformers' model (random weights) for a config object, by its architecture name."""
    import transformers

    cls = reference_class(hf_config.architectures[0]) if getattr(hf_config, "architectures", None) else transformers.AutoModelForCausalLM
    if issubclass(cls, transformers.PreTrainedModel):
        return cls._from_config(hf_config, **kwargs)
    return cls.from_config(hf_config, **kwargs)


def tiny_model(config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32):
    """transformers' model of `config` (config.json fields) with random weights from `seed`."""
    from transformers import AutoConfig

    fields = dict(config)
    model_type = fields.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **fields)
    hf_config.architectures = list(config["architectures"])
    torch.manual_seed(seed)
    return reference_from_config(hf_config, dtype=dtype)


def llama_config(**overrides: Any) -> dict[str, Any]:
    """A tiny LlamaForCausalLM config: GQA (4 heads, 2 KV heads), untied, default rope."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": TOKENIZER_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def write_config_only(directory: Path, config: dict[str, Any]) -> Path:
    """A model folder holding only config.json (no weights, no tokenizer), as served with
    `--load-format dummy`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
