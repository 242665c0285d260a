"""Tiny random LoRA adapters in the PEFT format, written by peft itself for a tiny base
checkpoint (no download), and the transformers + PEFT reference that loads them; and
`write_plain_adapter`, the same format written without peft (for machines without it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_tiny_adapter(
    base: Path,
    directory: Path,
    seed: int,
    rank: int = 8,
    alpha: float = 16.0,
    use_rslora: bool = False,
    targets: tuple[str, ...] = ALL_TARGETS,
    magnitude: float = 0.05,
) -> Path:
    """Writes a LoRA adapter of the checkpoint `base` with random A and B (PEFT zeroes B at
    init, which would make the adapter a no-op) through `get_peft_model(...).save_pretrained`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=use_rslora, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(magnitude * torch.randn(param.shape, generator=g))
    peft_model.save_pretrained(str(directory))
    return Path(directory)


def peft_reference(base: Path, adapter: Path):
    """transformers' model of `base` with the PEFT adapter applied, float32, eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def write_plain_adapter(base: Path, directory: Path, seed: int, rank: int = 8, magnitude: float = 0.05) -> Path:
    """A random adapter of every attention and MLP projection of the Llama-shaped
    checkpoint `base`, in PEFT's file format, written without peft."""
    from safetensors.torch import save_file

    config = json.loads((Path(base) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or hidden // heads
    shapes = {  # module -> (input width, output width)
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = magnitude * torch.randn(rank, fan_in, generator=g)
            tensors[f"{key}.lora_B.weight"] = magnitude * torch.randn(fan_out, rank, generator=g)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    targets = sorted({m.split(".")[-1] for m in shapes})
    adapter_config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none", "target_modules": targets}
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config))
    return directory


def tiny_lora_engine(tmp_path: Path, names: str = "abc", max_loras: int = 2):
    """A CPU engine on a tiny random llama with one plain adapter per letter of `names`
    (adapter i seeded i) and `max_loras` device slots: the fixture of the tests where
    adapters compete for slots."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, build_engine, resolve_model
    from max.testing.tiny_checkpoints import write_tiny_checkpoint
    from max.testing.tiny_configs import TINY_CONFIGS

    base = write_tiny_checkpoint(tmp_path / "base", TINY_CONFIGS["llama3"], seed=5)
    adapters = {n: write_plain_adapter(base, tmp_path / n, seed=i, magnitude=0.2) for i, n in enumerate(names)}
    config = PipelineConfig(
        model_path=str(base), kv_cache_page_size=4, max_length=128, max_batch_size=8, enable_lora=True,
        lora_modules=[f"{n}={p}" for n, p in adapters.items()], max_loras=max_loras, max_lora_rank=8,
    )  # fmt: skip
    return build_engine(resolve_model(config, register_all()))
