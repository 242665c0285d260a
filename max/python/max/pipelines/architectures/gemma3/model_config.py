"""Gemma 3's Hugging Face configs, read into a `Gemma3Config` (`Gemma3TextConfig`: text only)
or a `Gemma3VLConfig` (`Gemma3Config`: text and images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from max.errors import MaxError
from max.nn import DecoderConfig
from max.nn.siglip import SiglipVisionConfig
from max.pipelines.lib.hub.hf_config import rope_parameters
from max.pipelines.lib.model.decoder_config import decoder_config_from_hf


@dataclass
class Gemma3Config(DecoderConfig):
    """Gemma 3: local (sliding-window) layers with their own rope base and global layers
    with the (possibly scaled) main rope, in the configured `layer_types` pattern; scores
    scaled by query_pre_attn_scalar**-0.5; optional soft-capping of the final logits.

    `attn_logit_softcapping` is read by transformers' Gemma 3 config but never applied by
    its attention (unlike Gemma 2's); we follow the reference and do not apply it either.
    """

    local_rope_parameters: dict = field(default_factory=dict)

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Gemma3Config:
        """Reads a `Gemma3TextConfig` (transformers 5 nests rope parameters by layer type;
        older releases keep the local base in `rope_local_base_freq`)."""
        if "sliding_attention" in (getattr(hf_config, "rope_parameters", None) or {}):
            local = rope_parameters(hf_config, "sliding_attention")
        else:
            local = {"rope_type": "default", "rope_theta": getattr(hf_config, "rope_local_base_freq", 10000.0)}
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config_from_hf(
            cls,
            hf_config,
            max_seq_len,
            rope_parameters=rope_parameters(hf_config, "full_attention"),
            local_rope_parameters=local,
            hidden_act=getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
            attention_scale=float(hf_config.query_pre_attn_scalar) ** -0.5,
            qkv_bias=bias,
            o_bias=bias,
            qk_norm=True,
            final_logit_softcapping=getattr(hf_config, "final_logit_softcapping", None),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        )


@dataclass
class Gemma3VLConfig(Gemma3Config):
    """Gemma 3 with images (`Gemma3ForConditionalGeneration`): the Gemma 3 decoder of
    `text_config`, a SigLIP tower of `vision_config`, and the projector's output size: each
    image becomes `mm_tokens_per_image` tokens (its patches average-pooled to a square of
    that many), placed on the prompt's `image_token_id` tokens."""

    vision: SiglipVisionConfig | None = None
    mm_tokens_per_image: int = 256
    image_token_id: int = -1

    @classmethod
    def from_huggingface(cls, hf_config: Any, max_seq_len: int) -> Gemma3VLConfig:
        """Reads a `Gemma3Config` (model_type `gemma3`, with `text_config` and `vision_config`)."""
        text = hf_config.text_config
        config = super().from_huggingface(text, max_seq_len)
        tied = getattr(hf_config, "tie_word_embeddings", None)
        if tied is not None:
            config.tie_word_embeddings = bool(tied)
        v = hf_config.vision_config
        config.vision = SiglipVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_layers=v.num_hidden_layers,
            num_heads=v.num_attention_heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            num_channels=getattr(v, "num_channels", 3),
            layer_norm_eps=getattr(v, "layer_norm_eps", 1e-6),
            hidden_act=getattr(v, "hidden_act", "gelu_pytorch_tanh"),
        )
        config.mm_tokens_per_image = int(hf_config.mm_tokens_per_image)
        config.image_token_id = int(hf_config.image_token_id)
        side = config.vision.patches_per_side
        tokens_side = round(config.mm_tokens_per_image**0.5)
        if tokens_side**2 != config.mm_tokens_per_image or side % tokens_side:
            raise MaxError(
                f"mm_tokens_per_image {config.mm_tokens_per_image} is not a square that pools "
                f"the vision tower's {side} x {side} patches evenly"
            )
        return config
