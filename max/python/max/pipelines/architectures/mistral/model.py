"""Mistral's pipeline model: the generic `max.nn.Transformer` with `MistralConfig`."""

from max.pipelines.lib import PipelineModel

from .model_config import MistralConfig


class MistralModel(PipelineModel):
    """Runs `MistralForCausalLM` checkpoints."""

    config_class = MistralConfig
