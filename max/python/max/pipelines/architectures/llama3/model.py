"""Llama's pipeline model: the generic `max.nn.Transformer` with `Llama3Config`."""

from max.pipelines.lib import PipelineModel

from .model_config import Llama3Config


class Llama3Model(PipelineModel):
    """Runs `LlamaForCausalLM` checkpoints."""

    config_class = Llama3Config
