"""Token embeddings."""

import torch
from torch import nn


class ScaledEmbedding(nn.Embedding):
    """An embedding whose output is multiplied by a constant (Gemma: sqrt(hidden_size)).

    The constant is first rounded to the weight's dtype, as the reference does.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.scale = scale
        self._rounded: dict[torch.dtype, float] = {}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = self.weight.dtype
        if dtype not in self._rounded:
            self._rounded[dtype] = float(torch.tensor(self.scale, dtype=torch.float32).to(dtype))
        return super().forward(tokens) * self._rounded[dtype]
