"""Qwen2.5-VL's pipeline model: Qwen2's decoder with M-RoPE, fed by a vision tower."""

from __future__ import annotations

from torch import nn

from max.nn import Transformer
from max.nn.rotary_embedding import MultimodalRotaryEmbedding
from max.nn.vision import VisionTransformer
from max.pipelines.lib.model.vision_language_model import VisionLanguageModel

from .model_config import Qwen25VLConfig


class Qwen25VLNetwork(Transformer):
    """The language model (`max.nn.Transformer`, rotating by M-RoPE) and its `visual` encoder."""

    def __init__(self, config: Qwen25VLConfig) -> None:
        super().__init__(config)
        self.visual = VisionTransformer(config.vision)

    def rotary_embedding(self) -> nn.Module:
        """M-RoPE over the text model's rotary frequencies."""
        c = self.config
        return MultimodalRotaryEmbedding(
            c.head_dim, c.rope_parameters, c.max_position_embeddings, c.max_seq_len, c.mrope_section
        )


class Qwen25VLModel(VisionLanguageModel):
    """Runs `Qwen2_5_VLForConditionalGeneration` checkpoints."""

    config_class = Qwen25VLConfig

    def build_network(self) -> nn.Module:
        return Qwen25VLNetwork(self.model_config)
