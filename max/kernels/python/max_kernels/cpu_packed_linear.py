"""Float32 activations times a weight on the CPU: oneDNN's product over a weight packed
once, the rows padded to a multiple of `BLOCK_ROWS`.

A decode step multiplies one row per request; a speculative verify step multiplies the
request's draft too (k + 1 rows); a prefill chunk up to the step's token budget. torch's
float32 product (MKL) is slow at one row and costs ~2.4x as much at five (measured on a
2-core AMD EPYC Zen 4, torch 2.13, two threads, SmolLM2-135M's products: one layer's four
276 us at one row, 713 us at five; the 49152 x 576 LM head 10.1 ms at one row). oneDNN with
the weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`,
the op torch.compile's CPU backend uses) reads it about twice as fast, a block of eight
rows costs about what one row does (the LM head 3.4-4.0 ms either way), and it is faster
than MKL at prefill sizes too (the same machine, 512 rows: gate_up 9.4 against 14.9 ms,
down 5.1 against 5.7, the LM head 169 against 230).

The rows are always padded to a multiple of eight, so every row takes the same kernel with
the same order of sums whatever the number of rows and whichever row it is: a token's
logits are the same bits in a decode step, in a verify step and beside a prefill chunk,
whatever else the step holds. That keeps speculative decoding's output identical to plain
decoding, and a request's greedy tokens the same alone, in a batch of requests, or served
by another replica (oneDNN picks a different kernel for other row counts: unpadded, one
row and five rows of the 1536-input down projection differ in the last bits; MKL's rows
differ between 1, 3 and 512 rows too).

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
    """Whether x @ weight.T is a float32 product on the CPU without autograd (this module's
    case)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and x.numel() > 0
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
    """`F.linear(x, weight, bias)` for float32 rows on the CPU, through oneDNN's packed weight
    with the rows padded to a multiple of `BLOCK_ROWS` (see the module)."""
    k = x.shape[-1]
    rows = x.numel() // k
    padded = -(-rows // BLOCK_ROWS) * BLOCK_ROWS
    flat = x.reshape(rows, k)
    if padded != rows or not flat.is_contiguous():
        block = x.new_zeros((padded, k))
        block[:rows] = flat
        flat = block
    y = torch.ops.mkldnn._linear_pointwise(flat, _packed(weight), bias, "none", [], "")
    return y[:rows].reshape(*x.shape[:-1], weight.shape[0])


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What `packed_linear` computes, up to the order of the float32 sums."""
    return F.linear(x, weight, bias)
