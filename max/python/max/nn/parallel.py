"""Tensor parallelism inside the layers (Megatron style), on torch.distributed.

Each process (rank) of a tensor-parallel group holds a slice of every large weight:
column-parallel layers (q/k/v, gate/up, and the experts' gate/up) own a slice of the output
features, row-parallel layers (o, down, the experts' down) a slice of the input features
followed by one all-reduce, and the embedding and LM head a slice of the vocabulary. KV
heads are split across ranks, or replicated when there are fewer KV heads than ranks.
Layers read the group once, when they are built (`tensor_parallel()`), so a network built
in a single process (the default) is exactly the unsharded one: every collective below is
then a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from max.errors import MaxError
from max.nn.linear import Linear
from max_kernels import linear


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in its tensor-parallel group."""

    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed group of the device collectives

    def split(self, total: int, what: str) -> tuple[int, int]:
        """This rank's [start, stop) of `total` items split evenly (they must divide)."""
        if total % self.size:
            raise MaxError(f"{what} ({total}) is not divisible by the tensor-parallel size ({self.size})")
        part = total // self.size
        return self.rank * part, (self.rank + 1) * part

    def padded_split(self, total: int) -> tuple[int, int, int]:
        """(start, stop, padded size) of `total` rows split in equal parts of
        ceil(total / size); the last rank's part may hold fewer real rows."""
        part = -(-total // self.size)
        start = min(self.rank * part, total)
        return start, min(start + part, total), part

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """[start, stop) of the KV heads this rank holds: split across ranks, or, with fewer
        KV heads than ranks, the one KV head its query heads read (replicated)."""
        if num_kv_heads >= self.size:
            return self.split(num_kv_heads, "the number of KV heads")
        if self.size % num_kv_heads:
            raise MaxError(
                f"the tensor-parallel size ({self.size}) must be a multiple of the number of "
                f"KV heads ({num_kv_heads}) when it exceeds it"
            )
        head = self.rank // (self.size // num_kv_heads)
        return head, head + 1


_SINGLE = TensorParallel()
_current = _SINGLE


def tensor_parallel() -> TensorParallel:
    """The group that layers built now shard over (a single process unless set)."""
    return _current


@contextlib.contextmanager
def tensor_parallel_context(state: TensorParallel) -> Iterator[TensorParallel]:
    """Builds the enclosed layers as shards of `state`'s group."""
    global _current
    saved = _current
    _current = state
    try:
        yield state
    finally:
        _current = saved


def all_reduce(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """The sum of `x` over the group (in place; `x` itself in a single process)."""
    if tp.size > 1:
        dist.all_reduce(x, group=tp.group)
    return x


def all_gather_last_dim(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """The ranks' `x` [..., n] joined along the last dimension, in rank order."""
    if tp.size == 1:
        return x
    x = x.contiguous()
    parts = torch.empty((tp.size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(parts, x, group=tp.group)  # the ranks' x, one after another
    return torch.cat(parts.view(tp.size, *x.shape).unbind(0), dim=-1)


class RowParallelLinear(Linear):
    """A linear layer whose input features are split across the group (o_proj, down_proj):
    each rank multiplies its slice, the partial outputs are summed, then the bias is added.
    In a single process it is exactly `nn.Linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(x)
        y = all_reduce(linear(x, self.weight), self.tp)
        return y if self.bias is None else y + self.bias
