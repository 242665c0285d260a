"""Tiny random LoRA adapters in the PEFT format, written by peft itself for a tiny base
checkpoint (no download), and the transformers + PEFT reference that loads them."""

from __future__ import annotations

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
