"""Qwen3's pipeline models: the generic `max.nn.Transformer` with Qwen3's configs."""

from max.pipelines.lib import PipelineModel

from .model_config import Qwen3Config, Qwen3MoeConfig


class Qwen3Model(PipelineModel):
    """Runs `Qwen3ForCausalLM` checkpoints."""

    config_class = Qwen3Config


class Qwen3MoeModel(PipelineModel):
    """Runs `Qwen3MoeForCausalLM` checkpoints."""

    config_class = Qwen3MoeConfig
