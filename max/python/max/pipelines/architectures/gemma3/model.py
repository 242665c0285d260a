"""Gemma 3's network and pipeline model.

What is Gemma's own: embeddings scaled by sqrt(hidden_size); RMSNorm scaling by
(1 + weight); four norms per block (around attention and around the MLP); q/k norms; a
gelu-tanh gated MLP; two rotary tables (local and global layers); soft-capping of the
final logits when configured.

With images (`Gemma3ForConditionalGeneration`): a SigLIP tower encodes each image, the
projector pools its patches to `mm_tokens_per_image` vectors in the text width, and those
replace the prompt's image tokens; image tokens see their whole image (both ways).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from max.errors import MaxError
from max.nn import Attention, GatedMLP, GemmaRMSNorm, RotaryEmbedding, ScaledEmbedding, Transformer
from max.nn.siglip import SiglipVisionModel
from max.nn.transformer import FULL, SLIDING
from max.pipelines.lib import PipelineModel
from max.pipelines.lib.model.multimodal import ImageInput
from max.pipelines.lib.model.vision_language_model import VisionLanguageModel

from .model_config import Gemma3Config, Gemma3VLConfig


class Gemma3DecoderLayer(nn.Module):
    """Attention and MLP, each normalized before and after, each with a residual."""

    returns_residual_pair = True

    def __init__(self, config: Gemma3Config, index: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        d, eps = config.hidden_size, config.norm_eps
        self.input_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = Attention(
            index,
            d,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            rotary,
            qkv_bias=config.qkv_bias,
            o_bias=config.o_bias,
            qk_norm=lambda dim: GemmaRMSNorm(dim, eps),
            scale=config.attention_scale,
            sliding_window=config.window(index),
        )
        self.post_attention_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = GatedMLP(d, config.intermediate_size, config.hidden_act)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `DecoderLayer.forward`: the hidden state travels as (output, residual)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(x, positions))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class Gemma3Transformer(Transformer):
    """The generic decoder with Gemma's embedding, rope tables, layers and norm."""

    def embedding(self) -> nn.Module:
        c = self.config
        return ScaledEmbedding(c.vocab_size, c.hidden_size, c.hidden_size**0.5)

    def rotary_embedding(self) -> nn.Module:
        c = self.config

        def table(params: dict) -> RotaryEmbedding:
            return RotaryEmbedding(c.head_dim, params, c.max_position_embeddings, c.max_seq_len)

        return nn.ModuleDict({FULL: table(c.rope_parameters), SLIDING: table(c.local_rope_parameters)})

    def layer(self, index: int) -> nn.Module:
        return Gemma3DecoderLayer(self.config, index, self.rotary[self.config.layer_types[index]])

    def final_norm(self) -> nn.Module:
        return GemmaRMSNorm(self.config.hidden_size, self.config.norm_eps)


class Gemma3Model(PipelineModel):
    """Runs `Gemma3ForCausalLM` checkpoints."""

    config_class = Gemma3Config

    def build_network(self) -> nn.Module:
        return Gemma3Transformer(self.model_config)


class Gemma3MultiModalProjector(nn.Module):
    """A SigLIP image's patch vectors -> `mm_tokens_per_image` decoder embeddings: average
    pooling over the patch grid, Gemma's RMSNorm, and a projection to the text width."""

    def __init__(self, config: Gemma3VLConfig) -> None:
        super().__init__()
        vision = config.vision
        self.side = vision.patches_per_side
        self.kernel = self.side // round(config.mm_tokens_per_image**0.5)
        self.mm_soft_emb_norm = GemmaRMSNorm(vision.hidden_size, vision.layer_norm_eps)
        self.mm_input_projection_weight = nn.Parameter(torch.empty(vision.hidden_size, config.hidden_size))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [images, side * side, vision hidden] -> [images * tokens, hidden]."""
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, self.side, self.side)
        pooled = F.avg_pool2d(grid, self.kernel).flatten(2).transpose(1, 2).reshape(-1, d)
        return torch.matmul(self.mm_soft_emb_norm(pooled), self.mm_input_projection_weight).to(patches.dtype)


class Gemma3VLNetwork(Gemma3Transformer):
    """Gemma 3's decoder with its SigLIP `vision_tower` and `multi_modal_projector`."""

    def __init__(self, config: Gemma3VLConfig) -> None:
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision)
        self.multi_modal_projector = Gemma3MultiModalProjector(config)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch rows of whole images [images * patches, C*P*P] -> their embeddings
        [images * mm_tokens_per_image, hidden]."""
        return self.multi_modal_projector(self.vision_tower(pixels))


class Gemma3VLModel(VisionLanguageModel):
    """Runs `Gemma3ForConditionalGeneration` checkpoints: positions count image tokens as
    text (no M-RoPE), and an image's tokens attend to each other both ways."""

    config_class = Gemma3VLConfig
    mrope = False
    bidirectional_images = True

    def build_network(self) -> nn.Module:
        return Gemma3VLNetwork(self.model_config)

    def encode_images(self, pixels: torch.Tensor, images: Sequence[ImageInput]) -> torch.Tensor:
        return self.model.encode_images(pixels.to(self.dtype))

    def check_image_input(self, i: int, image: ImageInput) -> None:
        """Each image is the tower's fixed square of patches and takes `mm_tokens_per_image` tokens."""
        c = self.model_config
        v = c.vision
        side = v.patches_per_side
        if tuple(image.grid_thw) != (1, side, side) or image.pixel_values.shape != (v.num_patches, v.patch_width):
            raise MaxError(
                f"image {i}: pixels of shape {image.pixel_values.shape} (grid {image.grid_thw}); this model takes "
                f"{v.image_size} x {v.image_size} images as {(v.num_patches, v.patch_width)} patch rows (grid {(1, side, side)})"
            )
        if image.num_tokens != c.mm_tokens_per_image:
            raise MaxError(f"image {i}: {image.num_tokens} placeholder tokens; each image takes {c.mm_tokens_per_image}")

    def encoder_activation_bytes(self, max_batch_tokens: int) -> int:
        """The tower's activations for as many images as a step's tokens can hold."""
        c = self.model_config
        v = c.vision
        elem = torch.empty((), dtype=self.dtype).element_size()
        patches = max(1, max_batch_tokens // c.mm_tokens_per_image) * v.num_patches
        return patches * (8 * v.hidden_size + 2 * v.intermediate_size + v.patch_width) * elem
