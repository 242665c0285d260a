"""Checkpoint tensors that stack the experts of a layer ([experts, ...]), handed out one
expert at a time.

`max.nn.SparseMoE` reads its experts from per-expert tensors (`experts.3.gate_proj.weight`),
as most checkpoints store them. Some stack them instead (transformers' gpt-oss: one
`experts.gate_up_proj` [E, H, 2I] with gate and up interleaved). `unstack_experts` turns such
a tensor into one lazily read tensor per expert and view (e.g. the gate rows of expert 3):
each reads only its expert's slice from the file, and views of the same expert (gate and
up) share one read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from max.pipelines.lib.weights.checkpoint import CheckpointTensor

ExpertView = Callable[[torch.Tensor], torch.Tensor]
"""Maps one expert's slice of the stacked tensor to the tensor the model reads."""


class _LastExpert:
    """The most recently read expert slice of one stacked tensor (one slot: loading goes
    parameter by parameter, so the views of one expert are read one after another)."""

    def __init__(self, tensor: CheckpointTensor) -> None:
        self.tensor = tensor
        self.key: tuple[int, torch.dtype] | None = None
        self.value: torch.Tensor | None = None

    def get(self, expert: int, dtype: torch.dtype) -> torch.Tensor:
        if self.key != (expert, dtype):
            self.value = None  # frees the previous slice before reading the next one
            self.value = self.tensor.load_slice(dtype, 0, expert, expert + 1)[0]
            self.key = (expert, dtype)
        return self.value


def unstack_experts(
    tensor: CheckpointTensor, views: Mapping[str, ExpertView]
) -> list[dict[str, CheckpointTensor]]:
    """For each expert e of `tensor` [E, ...], {view name: view(tensor[e])} as lazily read
    checkpoint tensors named `<tensor name>[e]:<view name>` (in error messages)."""
    last = _LastExpert(tensor)
    probe = torch.empty(tensor.shape[1:], device="meta")
    shapes = {name: tuple(view(probe).shape) for name, view in views.items()}
    experts = []
    for e in range(tensor.shape[0]):
        parts = {}
        for name, view in views.items():

            def read(dtype: torch.dtype, e=e, view=view) -> torch.Tensor:
                return view(last.get(e, dtype))

            parts[name] = CheckpointTensor(f"{tensor.name}[{e}]:{name}", shapes[name], tensor.source, read, tensor.encoding)
        experts.append(parts)
    return experts
