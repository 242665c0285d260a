"""Phi-3's pipeline model: the generic `max.nn.Transformer` with `Phi3Config`."""

from max.pipelines.lib import PipelineModel

from .model_config import Phi3Config


class Phi3Model(PipelineModel):
    """Runs `Phi3ForCausalLM` checkpoints."""

    config_class = Phi3Config
