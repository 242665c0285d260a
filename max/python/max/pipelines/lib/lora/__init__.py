"""LoRA adapters: reading PEFT adapters (`peft_adapter`), the engine's registry of known,
host-resident and device-resident adapters (`registry`), their prefix-cache keys
(`prefix_keys`) and what `/metrics` shows of them (`lora_stats`). The layers' side (device
slots, the per-token products) is `max.nn.lora`."""

from max.pipelines.lib.lora.lora_stats import LoRAStats
from max.pipelines.lib.lora.peft_adapter import LoRAAdapter, read_adapter
from max.pipelines.lib.lora.prefix_keys import AdapterKeyedTokens
from max.pipelines.lib.lora.registry import LoRARef, LoRARegistry

__all__ = ["AdapterKeyedTokens", "LoRAAdapter", "LoRARef", "LoRARegistry", "LoRAStats", "read_adapter"]
