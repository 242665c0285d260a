"""The model runner of a network with LoRA slots: two CUDA graphs per shape, one without
LoRA and one whose kernels read the adapter rows from persistent buffers.

A step without adapter rows (base-model requests only) replays the base model's graph, in
which no LoRA kernel was captured. A step with adapter rows replays the LoRA graph, which
must serve any mix of adapters: its kernels read the rows grouped by slot and their tiles
(first row, end row, slot: the kernels' grid) from persistent int32 buffers that each
replay fills from the step's inputs, as it fills the token ids; the grid covers the most
tiles a batch of the graph's size can have, unused tiles having slot -1. Decode graphs and
single-request prefill graphs each have their buffers. Eager steps carry their groups in
their inputs (`lora_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from max.nn.lora import LoRABatch, lora_step
from max.pipelines.lib.runner.input_batch import ModelInputs
from max.pipelines.lib.runner.model_runner import ModelRunner, _Graph
from max_kernels import LoRAGroups, RaggedLayout
from max_kernels.lora_sgmv import max_group_tiles


class _GroupBuffers:
    """The persistent rows and tiles that the LoRA kernels of captured graphs read (sized
    for the largest graph of their kind; the token slots are the torch reference's and
    are not read on CUDA)."""

    def __init__(self, rows: int, num_slots: int, device: torch.device) -> None:
        self.num_slots = num_slots
        self.slots = torch.full((rows,), -1, dtype=torch.int32, device=device)
        self.rows = torch.zeros(rows, dtype=torch.int32, device=device)
        self.tiles = torch.zeros(3, max_group_tiles(rows, num_slots), dtype=torch.int32, device=device)
        self.tiles[2].fill_(-1)

    def batch(self, size: int) -> LoRABatch:
        """What a graph of `size` rows captures."""
        tiles = self.tiles[:, : max_group_tiles(size, self.num_slots)]
        return LoRABatch(self.slots[:size], LoRAGroups(self.rows[:size], tiles))

    def fill(self, lora: LoRABatch) -> None:
        """Puts a step's groups in the buffers (later tiles: slot -1)."""
        groups = lora.groups
        n, t = groups.rows.shape[0], groups.num_tiles
        self.rows[:n].copy_(groups.rows)
        self.tiles[:, :t].copy_(groups.tiles)
        self.tiles[2, t:].fill_(-1)


class LoRAModelRunner(ModelRunner):
    """`ModelRunner` with a base-model graph and a LoRA graph per shape (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        # Filled while the parent's constructor captures the graphs.
        self._decode: _GroupBuffers | None = None
        self._prefill: _GroupBuffers | None = None
        self._base_decode: dict[int, _Graph] = {}
        self._base_prefill: dict[int, _Graph] = {}
        super().__init__(*args, **kwargs)

    def _record(self, pool, layout: Callable[[], RaggedLayout], args: tuple, out: torch.Tensor) -> torch.cuda.CUDAGraph:
        """Captures the step twice: without LoRA (kept as the base graph of its shape) and
        with the adapter rows over the group buffers (returned). The buffers are allocated
        at the first, largest, capture of each kind."""
        size, probe = args[0].shape[0], layout()
        num_slots = self.model.lora.num_slots
        device = args[0].device
        if probe.num_decode == size:
            if self._decode is None:
                self._decode = _GroupBuffers(size, num_slots, device)
            buffers, base_graphs = self._decode, self._base_decode
        else:  # a single-request prefill
            if self._prefill is None:
                self._prefill = _GroupBuffers(size, 1, device)
            buffers, base_graphs = self._prefill, self._base_prefill
        base_graphs[size] = _Graph(size, super()._record(pool, layout, args, out), out)
        with lora_step(buffers.batch(size)):
            return super()._record(pool, layout, args, out)

    def _replay(self, inputs: ModelInputs) -> torch.Tensor:
        if inputs.lora is None:
            return self._replay_base("_graphs", "_base_decode", super()._replay, inputs)
        self._decode.fill(inputs.lora)
        return super()._replay(inputs)

    def _replay_prefill(self, inputs: ModelInputs) -> torch.Tensor:
        if inputs.lora is None:
            return self._replay_base("_prefill_graphs", "_base_prefill", super()._replay_prefill, inputs)
        self._prefill.fill(inputs.lora)
        return super()._replay_prefill(inputs)

    def _replay_base(self, graphs: str, base: str, replay: Callable, inputs: ModelInputs) -> torch.Tensor:
        """`replay` (the parent's, which fills the shared input buffers and replays from
        `self.<graphs>`) on the base-model graphs instead."""
        lora_graphs = getattr(self, graphs)
        setattr(self, graphs, getattr(self, base))
        try:
            return replay(inputs)
        finally:
            setattr(self, graphs, lora_graphs)

    def close(self) -> None:
        """Releases the base-model graphs too."""
        super().close()
        self._base_decode.clear()
        self._base_prefill.clear()
