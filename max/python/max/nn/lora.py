"""LoRA in the linear layers: device slots of adapter weights, and the step's adapter rows.

A network serving LoRA adapters gets, after its weights are loaded, a `LoRASlots` on each
targetable projection (`attach_lora`): zeroed stacks of `max_loras` adapters' A and B
matrices of rank up to `max_rank`, one slice per checkpoint module a fused projection
holds (q, k, v in `qkv_proj`; gate, up in `gate_up_proj`). A linear layer adds its slots'
products to its output for the rows of the step that use an adapter
(`max_kernels.lora_linear`), as the step's `LoRABatch` says: each token's slot (-1: the
base model) and the adapter rows grouped by slot (what the kernels run over). The batch
is set per step like
the attention layout (`lora_step`), so model code never mentions adapters; a step without
adapter rows has none, and its layers launch no LoRA kernel. The CUDA graphs capture it
over persistent buffers.

Which adapter sits in which slot is the pipeline's business (`max.pipelines.lib.lora`);
this module only holds the tensors and loads a slot (`LoRATargets.load_slot`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from max.errors import MaxError
from max.nn.attention import Attention
from max.nn.linear import Linear
from max.nn.mlp import GatedMLP
from max_kernels import LoRAGroups, LoRAStack, linear, lora_linear


@dataclass
class LoRABatch:
    """Which adapter slot each token of the step uses (`token_slots`, int32 [T] on the
    device, -1: the base model: what the torch reference reads), the adapter rows grouped
    by slot (`groups`: what the CUDA kernels read), and each request's slot on the host
    (`request_slots`, int32 [B]; None inside a captured graph)."""

    token_slots: torch.Tensor
    groups: LoRAGroups
    request_slots: np.ndarray | None = None


_CURRENT: contextvars.ContextVar[LoRABatch | None] = contextvars.ContextVar("max_lora_batch", default=None)


@contextlib.contextmanager
def lora_step(batch: LoRABatch | None) -> Iterator[None]:
    """Makes `batch` the adapter rows of the enclosed forward (None: base model only)."""
    token = _CURRENT.set(batch)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class LoRASlots(nn.Module):
    """The adapter slots of one linear layer: a [S, len(slices) * R, in] and b [S, out, R]
    (zero where no adapter or beyond an adapter's rank), and the model-wide scales [S]."""

    def __init__(self, in_features: int, slices: list[tuple[int, int]], scales: torch.Tensor, max_rank: int, dtype, device) -> None:
        super().__init__()
        out = slices[-1][0] + slices[-1][1]
        self.slices = slices
        self.rank = max_rank
        self.register_buffer("a", torch.zeros(scales.shape[0], len(slices) * max_rank, in_features, dtype=dtype, device=device))
        self.register_buffer("b", torch.zeros(scales.shape[0], out, max_rank, dtype=dtype, device=device))
        self.scales = scales  # shared by every layer; not a buffer of each

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The projection x @ weight.T (+ bias) plus each adapter row's product."""
        batch = _CURRENT.get()
        if batch is None:
            return linear(x, weight, bias)
        return lora_linear(x, weight, bias, self.stack, batch.token_slots, batch.groups)

    @property
    def stack(self) -> LoRAStack:
        """The slots' weights as the LoRA kernels take them."""
        return LoRAStack(self.a, self.b, self.scales, self.slices)


# The checkpoint modules (as PEFT names them) each fused projection holds, in order.
_ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj")
_MLP_MODULES = ("gate_proj", "up_proj")
# PEFT module names this layer hook serves.
TARGET_MODULES = (*_ATTENTION_MODULES, "o_proj", *_MLP_MODULES, "down_proj")


@dataclass
class LoRATarget:
    """Where a checkpoint module's A and B go: slice `index` of `slots`, of shape
    A [r, in_features], B [out_features, r]."""

    slots: LoRASlots
    index: int
    in_features: int
    out_features: int


class LoRATargets:
    """Every projection of a network that adapters may target, by PEFT module path
    (`layers.3.self_attn.q_proj`), and the shared scales of the slots."""

    def __init__(self, targets: dict[str, LoRATarget], scales: torch.Tensor, max_rank: int) -> None:
        self.targets = targets
        self.scales = scales
        self.max_rank = max_rank

    @property
    def num_slots(self) -> int:
        """Adapters the device holds at once (`--max-loras`)."""
        return self.scales.shape[0]

    def stage(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """An adapter's host tensors as `load_slot` copies them best: in the slots' dtype and,
        when the slots are on a GPU, in pinned memory, so that loading a slot while requests
        stream queues its copies behind the running step instead of waiting for it."""
        some = next(iter(self.targets.values())).slots.a
        pin = some.device.type == "cuda"

        def staged(t: torch.Tensor) -> torch.Tensor:
            t = t.to(some.dtype)
            return t.pin_memory() if pin else t

        return {path: (staged(a), staged(b)) for path, (a, b) in weights.items()}

    def load_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float) -> None:
        """Puts an adapter's (A, B) per module path into `slot` (every other module of the
        slot zeroed); the paths and shapes must have been checked (`check_fits`). The copies
        are queued on the device's stream, behind the steps that may still read the slot."""
        layers = {id(t.slots): t.slots for t in self.targets.values()}
        for slots in layers.values():
            slots.a[slot].zero_()
            slots.b[slot].zero_()
        for path, (a, b) in weights.items():
            t = self.targets[path]
            r, lo = a.shape[0], t.index * t.slots.rank
            offset = t.slots.slices[t.index][0]
            t.slots.a[slot, lo : lo + r].copy_(a, non_blocking=True)
            t.slots.b[slot, offset : offset + t.out_features, :r].copy_(b, non_blocking=True)
        self.scales[slot] = scale

    def check_fits(self, name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Raises MaxError naming the first module of adapter `name` that this network has
        no slot for, or whose shapes or rank do not fit."""
        for path, (a, b) in weights.items():
            t = self.targets.get(path)
            if t is None:
                raise MaxError(f"LoRA adapter {name!r}: module {path} is not a projection of this model that LoRA can target")
            r = a.shape[0]
            if r > self.max_rank:
                raise MaxError(f"LoRA adapter {name!r}: module {path} has rank {r}, over --max-lora-rank {self.max_rank}")
            if tuple(a.shape) != (r, t.in_features) or tuple(b.shape) != (t.out_features, r):
                raise MaxError(
                    f"LoRA adapter {name!r}: module {path} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                    f"this model needs ({r}, {t.in_features}) and ({t.out_features}, {r})"
                )


_LAYER = re.compile(r"(?:^|\.)(layers\.\d+\.(?:self_attn|mlp))$")


def attach_lora(network: nn.Module, max_loras: int, max_rank: int) -> LoRATargets:
    """Gives each attention and gated-MLP projection of `network` `max_loras` zeroed adapter
    slots of rank `max_rank`, on its weight's device and dtype; returns them by PEFT path."""
    if max_loras < 1 or max_rank < 1:
        raise MaxError(f"--max-loras ({max_loras}) and --max-lora-rank ({max_rank}) must be at least 1")
    weight = next(network.parameters())
    scales = torch.zeros(max_loras, dtype=torch.float32, device=weight.device)
    targets: dict[str, LoRATarget] = {}
    for path, module in network.named_modules():
        m = _LAYER.search(path)
        if m is None:
            continue
        prefix = m.group(1)
        if isinstance(module, Attention):
            fused = [("qkv_proj", _ATTENTION_MODULES, module.split_sizes), ("o_proj", ("o_proj",), None)]
        elif isinstance(module, GatedMLP):
            half = module.gate_up_proj.out_features // 2
            fused = [("gate_up_proj", _MLP_MODULES, (half, half)), ("down_proj", ("down_proj",), None)]
        else:
            continue
        for attr, names, sizes in fused:
            linear = getattr(module, attr)
            _check_linear(f"{path}.{attr}", linear)
            sizes = sizes or (linear.out_features,)
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            slices = list(zip(offsets, sizes))
            slots = LoRASlots(linear.in_features, slices, scales, max_rank, linear.weight.dtype, linear.weight.device)
            # Kept out of the module tree (object.__setattr__): the slots are no checkpoint
            # weights, so state dicts, loaders and memory plans never see them.
            object.__setattr__(linear, "lora", slots)
            for i, name in enumerate(names):
                targets[f"{prefix}.{name}"] = LoRATarget(slots, i, linear.in_features, sizes[i])
    if not targets:
        raise MaxError("this model has no attention or MLP projections that LoRA adapters can target")
    return LoRATargets(targets, scales, max_rank)


def _check_linear(path: str, linear: nn.Module) -> None:
    if not isinstance(linear, Linear):
        raise MaxError(
            f"LoRA needs float linear weights, but {path} is {type(linear).__name__} "
            "(quantized weights with LoRA are not supported yet)"
        )
    tp = getattr(linear, "tp", None)
    if tp is not None and tp.size > 1:
        raise MaxError("LoRA adapters with tensor parallelism are not supported yet")


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling of a LoRA product: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank
