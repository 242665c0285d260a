"""Gated activations of the Llama-family MLP: act(gate) * up on the fused gate|up projection.

The input is the output of one fused projection, x = [gate | up] along the last dimension
([..., 2I]); the result is [..., I]. `silu_and_mul` (SwiGLU) and `gelu_tanh_and_mul` (GeGLU,
Gemma) are Triton kernels that compute in float32 and round once; their `_reference`
versions are the torch path of `max.nn.mlp.GatedMLP`, computed in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from max_kernels.pdl import pdl_launch, pdl_prologue

# Triton's convention: compile-time constants and sizes in kernel signatures are UPPER_CASE.
# ruff: noqa: N803


def silu_and_mul_reference(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(x[..., :I]) * x[..., I:] in x's dtype, as `GatedMLP` computes it."""
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    return y if out is None else out.copy_(y)


def gelu_tanh_and_mul_reference(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """gelu(x[..., :I], approximate="tanh") * x[..., I:] in x's dtype, as `GatedMLP` computes it."""
    gate, up = x.chunk(2, dim=-1)
    y = F.gelu(gate, approximate="tanh") * up
    return y if out is None else out.copy_(y)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton silu(gate) * up of x = [gate | up] ([..., 2I] -> [..., I]), into `out` if given."""
    return _gated(x, out, gelu=False)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton gelu_tanh(gate) * up of x = [gate | up] ([..., 2I] -> [..., I]), into `out`."""
    return _gated(x, out, gelu=True)


def _gated(x: torch.Tensor, out: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    two_i = x.shape[-1]
    if two_i % 2:
        raise ValueError(f"the last dimension ({two_i}) must hold gate and up halves")
    inter = two_i // 2
    out_shape = (*x.shape[:-1], inter)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != out_shape:
        raise ValueError(f"out shape {tuple(out.shape)} != {out_shape}")
    if out.numel() == 0:
        return out
    x2 = x.reshape(-1, two_i)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    # A view (never a copy), so that the kernel's writes land in `out`.
    out2 = out.view(-1, inter)
    block = min(1024, triton.next_power_of_2(inter))
    grid = (x2.shape[0], triton.cdiv(inter, block))
    _gated_kernel[grid](
        x2, out2, inter, x2.stride(0), out2.stride(0), GELU=gelu, BLOCK=block, num_warps=4,
        **pdl_launch(x2),
    )  # fmt: skip
    return out


@triton.jit
def _gated_kernel(
    x_ptr, out_ptr, inter, sx, so, GELU: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    pdl_prologue(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * sx + inter + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        z = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        # 0.5 * (1 + tanh(z)) == sigmoid(2z): no tanh needed, and no cancellation in 1 + tanh
        # for negative z; exp overflowing to inf still gives the right limit (-0).
        act = gate / (1.0 + tl.exp(-2.0 * z))
    else:
        act = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * so + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)
