"""A token embedding whose table stays in the int4 or int8 layout of the quantized linear
layers (a GGUF file's `token_embd` on a GPU, where a bfloat16 copy of a 128k-row table is a
gigabyte).

The table is held by an `Int4Linear` or `Int8Linear` (rows = vocabulary, columns = hidden
size, groups of 32 along the hidden size); a lookup gathers the step's rows of codes and
scales and decodes only those, in torch ops that a CUDA graph can replay.
"""

from __future__ import annotations

import torch
from torch import nn

from max.nn.int4_linear import Int4Linear
from max.nn.int8_linear import Int8Linear
from max_kernels.int4_layout import dequantize_int4
from max_kernels.int8_layout import dequantize_int8


class QuantizedEmbedding(nn.Module):
    """`F.embedding(tokens, W)` with W held quantized (see the module docstring); outputs
    are in `dtype`, the network's compute dtype."""

    def __init__(self, table: Int4Linear | Int8Linear, dtype: torch.dtype, tp=None) -> None:
        super().__init__()
        self.tp = tp  # the replaced embedding's group (one process: quantized tables do not split)
        if isinstance(table, Int4Linear) and table.perm is not None:
            raise ValueError("an embedding table cannot permute its columns")
        self.table = table
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._rows(tokens).to(self.dtype)

    def _rows(self, index: torch.Tensor | None) -> torch.Tensor:
        """The float32 rows `index` of the table (all of them for None)."""
        t = self.table

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if index is None else x.index_select(0, index)

        if isinstance(t, Int8Linear):
            return dequantize_int8(pick(t.codes), pick(t.scales), t.group_size)
        return dequantize_int4(pick(t.qweight), pick(t.scales), pick(t.zeros), t.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table decoded (for the rare reader of an embedding's weight, e.g. a
        speculative head sharing it): a copy, in the compute dtype."""
        return self._rows(None).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.table.extra_repr()}"
