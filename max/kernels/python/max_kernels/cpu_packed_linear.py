"""A few rows of float32 activations times a weight on the CPU: oneDNN's product over a
weight packed once, the rows padded to one block of `BLOCK_ROWS`.

A decode step multiplies one row per request; a speculative verify step multiplies the
request's draft too (k + 1 rows). torch's float32 product (MKL) is slow at one row and
costs ~2.4x as much at five (measured on a 2-core AMD EPYC Zen 4, torch 2.13, two threads,
SmolLM2-135M's products: one layer's four 276 us at one row, 713 us at five; the 49152 x
576 LM head 10.1 ms at one row). oneDNN with the weight reordered once into its blocked
layout (`torch.ops.mkldnn._reorder_linear_weight`, the op torch.compile's CPU backend
uses) reads it about twice as fast, and a block of eight rows costs about what one row
does (the LM head 3.4-4.0 ms either way).

The rows are always padded to one block of eight, so every row takes the same kernel with
the same order of sums whatever the number of rows and whichever row it is: a token's
logits are the same bits in a decode step and in a verify step, which is what keeps
speculative decoding's output identical to plain decoding (oneDNN picks a different kernel
for other row counts: unpadded, one row and five rows of the 1536-input down projection
differ in the last bits). More rows than a block go to `F.linear` (prefill).

The packed copy is kept per weight (keyed by the tensor, rebuilt if the weight changes in
place), so float32 weights on the CPU take twice their memory once decoding starts.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BLOCK_ROWS = 8
# The attribute of a weight tensor that holds (its version and storage when packed, the
# packed copy): it lives and dies with the weight.
_ATTR = "_max_packed_linear"


@functools.cache
def packed_linear_available() -> bool:
    """Whether this torch has oneDNN and its packed-weight linear ops."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and all(
            hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


def takes_packed_linear(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight.T is at most `BLOCK_ROWS` float32 rows on the CPU (this module's
    case)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and 0 < x.numel() <= BLOCK_ROWS * x.shape[-1]
        and not weight.is_mkldnn
        and not torch.is_grad_enabled()
        and packed_linear_available()
    )


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's packed copy of `weight` for blocks of `BLOCK_ROWS` rows, made on first use
    and again after the weight changes (an in-place load bumps its version)."""
    key = (weight._version, weight.data_ptr())
    entry = getattr(weight, _ATTR, None)
    if entry is None or entry[0] != key:
        entry = (key, torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), BLOCK_ROWS))
        setattr(weight, _ATTR, entry)
    return entry[1]


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for at most `BLOCK_ROWS` float32 rows on the CPU, through
    oneDNN's packed weight with the rows padded to one block (see the module)."""
    k = x.shape[-1]
    rows = x.numel() // k
    block = x.new_zeros((BLOCK_ROWS, k))
    block[:rows] = x.reshape(rows, k)
    y = torch.ops.mkldnn._linear_pointwise(block, _packed(weight), bias, "none", [], "")
    return y[:rows].reshape(*x.shape[:-1], weight.shape[0])


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What `packed_linear` computes, up to the order of the float32 sums."""
    return F.linear(x, weight, bias)
