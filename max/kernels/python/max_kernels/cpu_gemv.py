"""One row of bfloat16 activations times a weight on the CPU: ATen's own GEMV, not oneDNN's.

Where oneDNN can run bfloat16 (AVX512-BF16 or AMX), torch sends every bfloat16 product
there, and for a single row (batch-1 decode) its kernel reads the weight at about half
the rate of ATen's vectorized GEMV. Measured on a 2-core AMD EPYC (Zen 4, AVX512-BF16),
torch 2.13, two threads, the linears of one SmolLM2-135M token: 21.3 ms through oneDNN,
10.1 ms through ATen; its 49152 x 576 LM head 5.6 ms against 1.9 ms. For two rows or more
oneDNN is the faster one (5 rows: 23.7 against 36.3 ms), so only single rows are re-routed.
On CPUs where oneDNN does not take bfloat16 (AVX2 only) ATen runs both cases already and
this changes nothing.

torch has no per-call switch: the global oneDNN flag is turned off around the one call and
restored (what `torch.backends.mkldnn.flags` does, without its other settings). The
engine's steps run on one thread, so no other product sees the flag off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def takes_cpu_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight.T is a single bfloat16 row on the CPU (`cpu_gemv`'s case)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.numel() == x.shape[-1]
        and not weight.is_mkldnn
    )


def cpu_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for one bfloat16 row on the CPU, through ATen's GEMV."""
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, weight, bias)
    finally:
        torch._C._set_mkldnn_enabled(enabled)
