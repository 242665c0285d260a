"""One embedding request's pooling while its prompt is prefilled, chunk by chunk.

The engine runs an embedding request as a prompt-only request (nothing is sampled). For
each of its chunks the step's input builder asks `rows` which of the chunk's tokens'
final hidden states (after the final norm) the pooling reads; after the forward pass the
engine hands those states to `add`, which keeps a running result on the device (no host
sync): the last token's state, the first token's (CLS), or a float32 sum for the mean.
`vector` then applies the model's Dense modules, truncates (Matryoshka `dimensions`) and
L2-normalizes as the model says.

Mean and CLS pooling read positions that a prefix-cache hit would skip, so such requests
compute their whole prompt (`reads_every_position`); last-token pooling only reads the
last token, which is always computed, so it keeps the prefix cache. A chunk that starts at
position 0 restarts the result: a preempted request recomputes its prompt from the start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from max.pipelines.lib.pooling.pooling_config import PoolingConfig


class RequestPooling:
    """See the module docstring."""

    def __init__(self, config: PoolingConfig, dimensions: int | None = None) -> None:
        if config.dense and config.projection is None:
            raise RuntimeError(
                "the model's Dense modules were not loaded (PoolingConfig.with_projection)"
            )
        self.mode = config.mode
        self.normalize = config.normalize
        self.projection = config.projection
        self.dimensions = dimensions
        self._value: torch.Tensor | None = None  # the last or first state, or the mean's sum
        self._count = 0

    @property
    def reads_every_position(self) -> bool:
        """The pooling reads tokens a prefix-cache hit would not compute."""
        return self.mode != "last"

    def rows(self, start: int, num_tokens: int, completes: bool) -> range:
        """The rows (relative to the chunk) whose hidden states the pooling reads, for a
        chunk of `num_tokens` tokens from position `start`; `completes`: it ends the prompt."""
        if self.mode == "mean":
            return range(num_tokens)
        if self.mode == "cls":
            return range(1) if start == 0 else range(0)
        return range(num_tokens - 1, num_tokens) if completes else range(0)

    def add(self, start: int, hidden: torch.Tensor) -> None:
        """Takes the hidden states [rows, hidden] of a chunk starting at position `start`
        (the rows `rows` named)."""
        if start == 0:
            self._value, self._count = None, 0
        if hidden.shape[0] == 0:
            return
        if self.mode == "mean":
            total = hidden.float().sum(dim=0)
            self._value = total if self._value is None else self._value + total
            self._count += hidden.shape[0]
        else:
            self._value = hidden[0].float()

    def vector(self) -> torch.Tensor:
        """The request's embedding (float32, on the device)."""
        if self._value is None:
            raise RuntimeError("no hidden states were pooled for this request")
        value = self._value / self._count if self.mode == "mean" else self._value
        if self.projection is not None:
            value = self.projection(value)
        if self.dimensions is not None:
            value = value[: self.dimensions]
        return F.normalize(value, p=2, dim=-1) if self.normalize else value
