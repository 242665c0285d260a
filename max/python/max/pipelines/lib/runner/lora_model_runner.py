"""The model runner of a network with LoRA slots: its CUDA graphs take each row's adapter
slot as an input.

A captured decode graph must serve any mix of adapters, so the slots are not baked in: the
graph reads them from a persistent int32 buffer (the BGMV kernels load them on the
device), which each replay fills from the step's inputs, as it fills the token ids. The
single-request prefill graphs read their row tiles (first row, end row, slot: the SGMV
kernels' grid) the same way, from a buffer of the largest chunk's tiles whose unused
tiles have slot -1. Eager steps carry their slots in their
inputs (`lora_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from max.nn.lora import LoRABatch, lora_step
from max.pipelines.lib.runner.input_batch import ModelInputs
from max.pipelines.lib.runner.model_runner import ModelRunner
from max_kernels import LoRASegments, RaggedLayout
from max_kernels.lora_sgmv import BLOCK_M


class LoRAModelRunner(ModelRunner):
    """`ModelRunner` whose graphs read the adapter slots from persistent buffers."""

    _decode_slots: torch.Tensor | None = None
    _prefill_slots: torch.Tensor | None = None
    _prefill_tiles: torch.Tensor | None = None  # int32 [3, tiles]: first row, end row, slot

    def _record(self, pool, layout: Callable[[], RaggedLayout], args: tuple, out: torch.Tensor) -> torch.cuda.CUDAGraph:
        """Captures the step with the adapter rows over the slot buffers (allocated at the
        first, largest, capture of each kind; base model until a replay fills them)."""
        size, probe = args[0].shape[0], layout()
        device = args[0].device
        if probe.num_decode == size:
            if self._decode_slots is None:
                self._decode_slots = torch.full((size,), -1, dtype=torch.int32, device=device)
            batch = LoRABatch(self._decode_slots[:size])
        else:  # a single-request prefill: its row tiles, slot -1 where unused
            if self._prefill_slots is None:
                self._prefill_slots = torch.full((size,), -1, dtype=torch.int32, device=device)
                starts = torch.arange(0, size, BLOCK_M, dtype=torch.int32, device=device)
                self._prefill_tiles = torch.stack([starts, starts + BLOCK_M, torch.full_like(starts, -1)])
            tiles = self._prefill_tiles[:, : -(-size // BLOCK_M)]
            batch = LoRABatch(self._prefill_slots[:size], LoRASegments(tiles))
        with lora_step(batch):
            return super()._record(pool, layout, args, out)

    def _replay(self, inputs: ModelInputs) -> torch.Tensor:
        b = inputs.layout.num_requests
        if inputs.lora is not None:
            self._decode_slots[:b].copy_(inputs.lora.token_slots)
        else:
            self._decode_slots[:b].fill_(-1)
        return super()._replay(inputs)

    def _replay_prefill(self, inputs: ModelInputs) -> torch.Tensor:
        n = inputs.layout.query_lens[0]
        tiles = 0 if inputs.lora is None else inputs.lora.segments.num_tiles
        if tiles:
            self._prefill_slots[:n].copy_(inputs.lora.token_slots)
            self._prefill_tiles[:, :tiles].copy_(inputs.lora.segments.tiles)
        self._prefill_tiles[2, tiles:].fill_(-1)
        return super()._replay_prefill(inputs)
