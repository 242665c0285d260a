"""Token embeddings and the language-model head, split by vocabulary under tensor parallelism.

A rank holds the rows [start, stop) of the vocabulary, padded to an equal share. The
embedding looks up the tokens in its range and the ranks' rows are summed (each token is
in exactly one range); the head computes its share of the logits and the shares are joined.
In a single process both are the plain unsplit layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from max.nn.checkpoint_layout import Shard
from max.nn.parallel import all_gather_last_dim, all_reduce, tensor_parallel
from max_kernels import linear


class _VocabParallel(nn.Module):
    """A [vocab, dim] weight of which this rank holds an equal share of rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.tp = tensor_parallel()
        self.num_embeddings = num_embeddings
        self.start, self.stop, rows = self.tp.padded_split(num_embeddings)
        self.weight = nn.Parameter(torch.empty(rows, embedding_dim))
        # A quantized copy of the table that computes the logits instead of `weight` (the
        # CPU's int8 head: `max.nn.quantized_linear.quantized_head`), or None.
        self.quantized_logits: nn.Module | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, vocab] of hidden states x [N, dim] against the whole table (this
        rank's rows, joined across ranks): the LM head, or a tied embedding used as one."""
        if self.quantized_logits is not None:
            return self.quantized_logits(x)
        return vocab_logits(x, self.weight, self.num_embeddings, self.tp)

    def checkpoint_layout(self) -> dict:
        """This rank's rows of the checkpoint's weight, zero-padded to its share."""
        if self.tp.size == 1:
            return {}
        rows = self.weight.shape[0]
        return {"weight": Shard.of("weight", 0, (self.start, self.stop), self.num_embeddings, rows)}


class VocabParallelEmbedding(_VocabParallel):
    """`nn.Embedding`, its rows split across the tensor-parallel group."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(tokens, self.weight)
        local = tokens - self.start
        outside = (local < 0) | (local >= self.stop - self.start)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside[:, None], 0), self.tp)


class ScaledEmbedding(VocabParallelEmbedding):
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


class VocabParallelLMHead(_VocabParallel):
    """The untied language-model head: hidden states -> logits over the whole vocabulary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def vocab_logits(x: torch.Tensor, weight: torch.Tensor, vocab_size: int, tp) -> torch.Tensor:
    """Logits [N, vocab] from this rank's rows of a vocabulary-split weight (a tied
    embedding's, or the head's): each rank's share, joined, the padding dropped."""
    logits = all_gather_last_dim(linear(x, weight), tp)
    return logits if logits.shape[-1] == vocab_size else logits[..., :vocab_size]
