"""The per-step context that attention layers read (vLLM's "forward context").

A model's forward takes only token ids and positions, as gpt-fast's does. What attention
needs beyond that — where each request's keys live in the paged cache, how the ragged
batch is laid out — is set once per step by the pipeline model and read here by every
attention layer, so block-level code never mentions batching or pages.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from max_kernels import RaggedLayout


class LayerKVCache(Protocol):
    """What attention needs of a KV cache: each layer's key and value page tensors, and
    their scales (used when the pages hold FP8 codes)."""

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[num_pages, page_size, Hkv, D] key and value tensors of layer `index`."""
        ...

    def layer_scales(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 [1] per-tensor key and value scales of layer `index`."""
        ...


@dataclass
class StepContext:
    """The batch layout of the running step and the cache its attention layers use."""

    layout: RaggedLayout
    kv_cache: LayerKVCache


_CURRENT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "max_step_context", default=None
)


@contextlib.contextmanager
def step_context(layout: RaggedLayout, kv_cache: LayerKVCache) -> Iterator[StepContext]:
    """Makes `layout` and `kv_cache` visible to attention layers for the enclosed forward."""
    ctx = StepContext(layout, kv_cache)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_step() -> StepContext:
    """The running step's context; attention layers call this inside a forward."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("attention ran outside step_context(): no KV cache layout is set")
    return ctx
