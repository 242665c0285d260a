"""Decoding of GGML tensor encodings into float tensors, vectorized in torch.

Each function takes the raw bytes of a tensor as a uint8 tensor [num_blocks, block_bytes]
and returns float32 values [num_blocks, block_elements], computed in the same order as
llama.cpp's reference (and the `gguf` package) so results agree bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from max.errors import MaxError
from max.pipelines.lib.weights.gguf_reader import GGML_TYPES, GGUFTensorInfo


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte `start` of every block, as float32 [n, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k]: all low nibbles, then all high nibbles."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return d * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return d * (_nibbles(b[:, 2:]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    return d * _nibbles(b[:, 4:]).float() + m


def _fifth_bits(qh_bytes: torch.Tensor) -> torch.Tensor:
    """[n, 4] little-endian uint32 -> [n, 32] bit j of each, shifted to value 16."""
    qh = qh_bytes.to(torch.int64)
    qh = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
    bits = (qh[:, None] >> torch.arange(32, device=qh.device)) & 1
    return (bits << 4).to(torch.uint8)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])
    return d * (q.float() - 16)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return d * q.float() + m


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpacks the 12 bytes of 6-bit scales and mins of Q4_K / Q5_K into [n, 8] each."""
    s = scales.to(torch.int32)
    sc_lo = s[:, 0:4] & 63
    mn_lo = s[:, 4:8] & 63
    sc_hi = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn_hi = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat((sc_lo, sc_hi), -1).float(), torch.cat((mn_lo, mn_hi), -1).float()


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[:, 4:16])
    d_sc = (d * sc).view(n, 8, 1)
    d_mn = (dmin * mn).view(n, 8, 1)
    # 4 groups of 32 bytes; each gives sub-block 2j from low nibbles, 2j+1 from high ones.
    qs = b[:, 16:].view(n, 4, 1, 32)
    q = torch.cat((qs & 0x0F, qs >> 4), dim=2).view(n, 8, 32).float()
    return (d_sc * q - d_mn).view(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48].view(n, 1, 32)
    qs = b[:, 48:].view(n, 4, 1, 32)
    low = torch.cat((qs & 0x0F, qs >> 4), dim=2).view(n, 8, 32)
    shifts = torch.arange(8, device=b.device, dtype=torch.uint8).view(1, 8, 1)
    high = ((qh >> shifts) & 1) << 4
    q = (low | high).float()
    return ((d * sc).view(n, 8, 1) * q - (dmin * mn).view(n, 8, 1)).view(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = b[:, 0:128].view(n, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = b[:, 128:192].view(n, 2, 1, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float().view(n, 2, 8)
    d = _f16(b, 208).view(n, 1, 1)
    # Within each half of 128 values: quarter k takes low (k<2) or high nibbles of ql
    # bytes [32 * (k % 2) ...], and bits 2k..2k+1 of qh.
    low = torch.cat((ql & 0x0F, ql >> 4), dim=2)  # [n, 2, 4, 32] quarters 0..3
    shifts = torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).view(1, 1, 4, 1)
    high = ((qh >> shifts) & 3) << 4
    q = (low | high).to(torch.int16) - 32  # [n, 2, 4, 32]
    # Scale index within a half: quarter k, 16-value sub-block s -> 2k + s.
    sc = scales.view(n, 2, 4, 2, 1)
    y = (d.view(n, 1, 1, 1, 1) * sc) * q.view(n, 2, 4, 2, 16).float()
    return y.view(n, 256)


_DECODERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

SUPPORTED_GGML_TYPES = tuple(_PLAIN) + tuple(_DECODERS)


def dequantize(
    raw: np.ndarray, info: GGUFTensorInfo, dtype: torch.dtype, source: str = ""
) -> torch.Tensor:
    """Decodes a GGUF tensor's bytes into a float tensor of its shape, in `dtype`."""
    name, _, block_bytes = GGML_TYPES[info.ggml_type]
    if name in _PLAIN:
        # Copy: the bytes are a read-only view of the memory-mapped file.
        return _frombuffer(raw, _PLAIN[name]).view(info.shape).to(dtype, copy=True)
    decoder = _DECODERS.get(name)
    if decoder is None:
        where = f"{source}: " if source else ""
        raise MaxError(
            f"{where}tensor {info.name!r} is encoded as {name}, which is not supported "
            f"(supported: {', '.join(SUPPORTED_GGML_TYPES)})"
        )
    blocks = _frombuffer(raw, torch.uint8).view(-1, block_bytes)
    return decoder(blocks).view(info.shape).to(dtype)


def _frombuffer(raw: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch view of read-only file bytes; every decoder only reads from it."""
    if raw.size == 0:
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable"
        return torch.frombuffer(raw, dtype=dtype)
