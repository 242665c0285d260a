"""Qwen2's pipeline model: the generic `max.nn.Transformer` with `Qwen2Config`."""

from max.pipelines.lib import PipelineModel

from .model_config import Qwen2Config


class Qwen2Model(PipelineModel):
    """Runs `Qwen2ForCausalLM` checkpoints."""

    config_class = Qwen2Config
