"""The SigLIP vision encoder (Gemma 3's vision tower): a plain ViT over fixed-size images.

An image arrives resized to `image_size` square and cut into `patch_size` patches, row by
row, each patch a row of `channels x patch x patch` pixels (the layout of the checkpoint's
Conv2d weight, whose stride is its kernel, so embedding a patch is one matrix product).
Every patch gets a learned position embedding; `num_layers` pre-norm blocks (LayerNorm,
bidirectional multi-head attention, LayerNorm, gelu MLP, all with biases) follow, then a
final LayerNorm. The output is one vector per patch; what a model makes of them (Gemma 3
pools and projects them) is the model's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.parallel import TensorParallel, tensor_parallel_context


@dataclass
class SiglipVisionConfig:
    """A SigLIP vision tower's shape (`vision_config` of a Gemma 3 config)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def patches_per_side(self) -> int:
        """Patches along each side of the (square) image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return self.patches_per_side**2

    @property
    def patch_width(self) -> int:
        """Pixels in one patch row: channels x patch x patch."""
        return self.num_channels * self.patch_size**2


def _activation(name: str):
    """The MLP's activation by its Hugging Face name."""
    if name in ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported SigLIP activation {name!r}")


class SiglipEmbeddings(nn.Module):
    """Patch rows -> vectors plus each patch's learned position embedding."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [images, num_patches, C*P*P] -> [images, num_patches, hidden]."""
        weight = self.patch_embedding.weight
        x = F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.patch_embedding.bias)
        return x + self.position_embedding.weight


class SiglipAttention(nn.Module):
    """Bidirectional multi-head attention over the patches of each image."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [images, patches, hidden] -> [images, patches, hidden]."""
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SiglipMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """norm -> attention -> residual, norm -> MLP -> residual."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    """The stack of encoder layers (named as the checkpoint's `encoder.layers.N`)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVisionModel(nn.Module):
    """The whole tower: patch rows of several images in, one vector per patch out.

    Under tensor parallelism it is not split: every rank holds it whole (rank 0 runs it
    while building a step's inputs).
    """

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.config = config
        with tensor_parallel_context(TensorParallel()):
            self.embeddings = SiglipEmbeddings(config)
            self.encoder = SiglipEncoder(config)
            self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [images * num_patches, C*P*P] (each image's patches row by row)
        -> [images, num_patches, hidden]."""
        c = self.config
        patches = pixels.view(-1, c.num_patches, c.patch_width)
        return self.post_layernorm(self.encoder(self.embeddings(patches)))
