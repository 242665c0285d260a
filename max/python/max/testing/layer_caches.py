"""A KV cache stand-in for tests of one attention layer: every layer index reads the same
pages (`max.nn.step_context.LayerKVCache`)."""

from __future__ import annotations

import torch


class OneLayerCache:
    """K and V pages [num_pages, page_size, Hkv, D] that `step_context` hands to a layer.
    `scales` are what `layer_scales` returns; None: the layer must not ask (a latent cache
    has none), and asking fails the test."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, scales: tuple | None = (None, None)) -> None:
        self.k, self.v, self.scales = k, v, scales

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pages, whatever the layer."""
        return self.k, self.v

    def layer_scales(self, index: int):
        """The per-tensor scales given at construction."""
        if self.scales is None:
            raise AssertionError("this cache has no scales")
        return self.scales
