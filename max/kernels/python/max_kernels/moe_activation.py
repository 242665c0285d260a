"""The gated activations of the experts' MLPs: in torch for the references, and as the
epilogue every Triton expert kernel shares (`_gated_activation`).

`act(gate) * up` is SwiGLU ("silu"), GeGLU ("gelu_tanh"), or gpt-oss's clamped SwiGLU
("clamped_swiglu"): with the gate clamped above and up clamped on both sides at `limit`,
    (up + 1) * gate * sigmoid(alpha * gate).
The kernels round where the references round (each projection, then the activation, to
the activations' dtype), so a kernel's result agrees with its reference to the dtype's
precision whichever weight format or tiling computed the projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Triton kernels name their sizes and compile-time constants in capitals.
# ruff: noqa: N803

ACTIVATIONS = ("silu", "gelu_tanh", "clamped_swiglu")
# The kernels' compile-time code of each activation.
ACT_CODES = {"silu": 0, "gelu_tanh": 1, "clamped_swiglu": 2}
# gpt-oss's constants (transformers' `swiglu_alpha`, `swiglu_limit` defaults).
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


def check_activation(name: str) -> int:
    """The kernels' code of activation `name`; raises ValueError for an unknown one."""
    if name not in ACT_CODES:
        raise ValueError(f"unknown MoE activation {name!r} (choose from {', '.join(ACTIVATIONS)})")
    return ACT_CODES[name]


def activation_fn(name: str, alpha: float, limit: float):
    """(gate, up) -> the gated activation, in the inputs' dtype."""
    check_activation(name)
    if name == "silu":
        return lambda gate, up: F.silu(gate) * up
    if name == "gelu_tanh":
        return lambda gate, up: F.gelu(gate, approximate="tanh") * up
    return lambda gate, up: clamped_swiglu(gate, up, alpha, limit)


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss's gated activation, in the order transformers computes it (GptOssExperts)."""
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


@triton.jit
def _gated_activation(acc_g, acc_u, DT: tl.constexpr, ACT: tl.constexpr, alpha, limit):
    """act(gate) * up in DT from the float32 gate and up projections (biases added), any
    shape. Rounds where the reference rounds: each projection, then the activation, to DT.
    ACT: 0 silu, 1 gelu_tanh, 2 clamped_swiglu (`ACT_CODES`)."""
    g = acc_g.to(DT).to(tl.float32)
    u = acc_u.to(DT).to(tl.float32)
    if ACT == 2:
        # Clamped SwiGLU: (up + 1) * glu, each factor rounded as the reference rounds it.
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
        ga = (g * alpha).to(DT).to(tl.float32)
        sig = (1.0 / (1.0 + tl.exp(-ga))).to(DT).to(tl.float32)
        act = g * sig
        u = (u + 1.0).to(DT).to(tl.float32)
    elif ACT == 1:
        inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        # tanh(y) = 1 - 2 / (exp(2y) + 1): saturates cleanly at both ends.
        act = 0.5 * g * (2.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0))
    else:
        act = g / (1.0 + tl.exp(-g))
    return (act.to(DT).to(tl.float32) * u).to(DT)


@triton.jit
def _weighted_output(y, weight, DT: tl.constexpr):
    """An expert's float32 output (bias added) times its router weight, rounded as the
    reference rounds them: the output and the weight each to DT, then their product."""
    return (y.to(DT).to(tl.float32) * weight.to(DT).to(tl.float32)).to(DT)
