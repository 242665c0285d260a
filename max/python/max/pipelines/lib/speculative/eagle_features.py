"""Taking the features an EAGLE head reads out of the target's forward pass.

EAGLE-3 reads the residual stream entering three target layers (`EagleHeadConfig.aux_layers`),
EAGLE the target's last hidden state after its final norm, at every token the target runs.
`TargetFeatureTap` hooks the target network's decoder layers (no change to the model or
the runner) and copies those features, for every row of each step, into one persistent
buffer [max_tokens, width]: after a step, `rows(T)` are its T tokens' features, in the
step's row order. Because the copies go to a fixed buffer, a CUDA graph captured with the
tap installed replays them too (a graph's padding rows land past the step's real rows).
A graph captured before the tap was installed copies nothing: `num_writes` counts the
eager writes so that a reader can tell fresh rows from stale ones (`fresh_since`).
"""

from __future__ import annotations

import torch
from torch import nn

from max.errors import MaxError
from max.pipelines.lib.speculative.eagle_config import EagleHeadConfig


class TargetFeatureTap:
    """Hooks `network` (a `max.nn.Transformer`: decoder layers that carry the stream as
    (output, residual)) so that each forward writes the head's features into `buffer`."""

    def __init__(self, network: nn.Module, config: EagleHeadConfig, max_tokens: int) -> None:
        layers = network.layers
        if not all(getattr(layer, "returns_residual_pair", False) for layer in layers):
            raise MaxError("EAGLE heads need a target whose decoder layers carry the residual stream apart (max.nn.DecoderLayer)")
        self.config = config
        self.max_tokens = max_tokens
        width = config.target_hidden_size
        self.width = width * (len(config.aux_layers) if config.method == "eagle3" else 1)
        weight = network.embed_tokens.weight
        self.buffer = torch.zeros(max_tokens, self.width, dtype=weight.dtype, device=weight.device)
        self._hooks = []
        # Eager forwards that wrote the buffer, and whether a CUDA graph captured the copies.
        self.num_writes = 0
        self.in_graphs = False
        if config.method == "eagle3":
            for slot, index in enumerate(config.aux_layers):
                self._hooks.append(layers[index].register_forward_pre_hook(self._entering(slot * width, width)))
        else:
            norm = network.norm
            self._hooks.append(layers[-1].register_forward_hook(self._final(norm)))

    def _store(self, columns: slice, stream: torch.Tensor) -> None:
        if stream.shape[0] > self.max_tokens:
            # Too many rows to keep: the step's features are not taken (and not counted as
            # written, so that nobody reads the buffer's older rows as this step's).
            return
        self.buffer[: stream.shape[0], columns].copy_(stream)
        if stream.is_cuda and torch.cuda.is_current_stream_capturing():
            self.in_graphs = True
        elif columns.start == 0:  # one count per forward
            self.num_writes += 1

    def fresh_since(self, num_writes: int) -> bool:
        """Whether the buffer holds a step newer than when `num_writes` was read: a forward
        wrote it since, or every step's graph copies into it."""
        return self.in_graphs or self.num_writes != num_writes

    def _entering(self, start: int, width: int):
        columns = slice(start, start + width)

        def hook(module: nn.Module, args: tuple) -> None:
            x, residual = args[0], args[1]
            self._store(columns, x if residual is None else x + residual)

        return hook

    def _final(self, norm: nn.Module):
        columns = slice(0, self.width)

        def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            x, residual = output
            self._store(columns, norm(x + residual))

        return hook

    def rows(self, num_tokens: int) -> torch.Tensor:
        """Features [num_tokens, width] of the last step's tokens (a view: valid until the
        next step)."""
        return self.buffer[:num_tokens]

    def remove(self) -> None:
        """Takes the hooks off the target."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
