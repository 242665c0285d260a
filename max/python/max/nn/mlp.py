"""Feed-forward blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from max.errors import MaxError
from max.nn.checkpoint_layout import Concat, whole_or_shard
from max.nn.linear import Linear
from max.nn.parallel import RowParallelLinear, tensor_parallel
from max_kernels import gelu_tanh_and_mul, silu_and_mul

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

# Activations with a fused "act(gate) * up" kernel, keyed like ACTIVATIONS.
_FUSED_GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": silu_and_mul,
    "swish": silu_and_mul,
    "gelu_pytorch_tanh": gelu_tanh_and_mul,
    "gelu_new": gelu_tanh_and_mul,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a Hugging Face config names (`hidden_act`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise MaxError(
            f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        ) from None


def gated_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`act(gate) * up` of a tensor holding [gate | up] along its last dimension."""
    fused = _FUSED_GATES.get(name)
    if fused is not None:
        return fused
    act = activation(name)

    def gate(x: torch.Tensor) -> torch.Tensor:
        g, u = x.chunk(2, dim=-1)
        return act(g) * u

    return gate


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the SwiGLU / GeGLU feed-forward of Llama-family models.

    gate and up are one fused projection (`gate_up_proj`), filled from the checkpoint's
    separate `gate_proj` and `up_proj`. Under tensor parallelism a rank holds a slice of
    the intermediate features; `down_proj` sums the ranks' outputs.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False):
        super().__init__()
        tp = tensor_parallel()
        self.intermediate = (tp.split(intermediate_size, "the MLP's intermediate size"), intermediate_size)
        local = self.intermediate[0][1] - self.intermediate[0][0]
        self.gate_up_proj = Linear(hidden_size, 2 * local, bias=bias)
        self.down_proj = RowParallelLinear(local, hidden_size, bias, tp)
        self.act_and_mul = gated_activation(act)

    def checkpoint_layout(self) -> dict:
        """gate_up_proj is this rank's rows of gate_proj and up_proj, stacked; down_proj its
        columns of down_proj."""
        bounds, full = self.intermediate

        def parts(kind: str) -> Concat:
            return Concat(tuple(whole_or_shard(f"{n}.{kind}", 0, bounds, full) for n in ("gate_proj", "up_proj")))

        layout = {"gate_up_proj.weight": parts("weight"), "down_proj.weight": whole_or_shard("down_proj.weight", 1, bounds, full)}
        if self.gate_up_proj.bias is not None:
            layout["gate_up_proj.bias"] = parts("bias")
        return layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))
