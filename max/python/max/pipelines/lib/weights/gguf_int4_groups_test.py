"""Weights decoded from GGUF 4-bit blocks (by the `gguf` package) come back on their own grid:
the int4 layout's codes, scales and zeros reproduce them to float32 rounding, where min / max
re-quantization re-rounds them."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from max.nn.gguf_grids import int4_groups_on_grid
from max_kernels.int4_layout import dequantize_int4, int4_codes_of, pack_int4, quantize_int4_groups


def _decoded_blocks(type_name: str, rows: int, blocks_per_row: int, seed: int = 0) -> torch.Tensor:
    """Random blocks with small float16 scales (about 1e-3), decoded: [rows, blocks * block]."""
    qtype = GGMLQuantizationType[type_name]
    block, nbytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, nbytes), dtype=np.uint8)
    for offset in {"Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2]}[type_name]:
        scale = rng.uniform(2e-4, 2e-3, size=rows * blocks_per_row).astype(np.float16)
        raw[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(dequantize(raw, qtype).reshape(rows, blocks_per_row * block).copy())


def _held(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    return dequantize_int4(pack_int4(int4_codes_of(w, scales, zeros, 32)), scales, zeros, 32)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K"])
def test_decoded_4_bit_blocks_come_back_on_their_grid(type_name):
    w = _decoded_blocks(type_name, 8, 2 if type_name == "Q4_K" else 16)
    scales, zeros = int4_groups_on_grid(w, 32)
    torch.testing.assert_close(_held(w, scales, zeros), w, rtol=1e-5, atol=1e-6)
    # Min / max re-quantization re-rounds the groups that do not use codes 0 and 15.
    _, s, z = quantize_int4_groups(w, 32, integer_zeros=False)
    assert (_held(w, s.float(), z.float()) - w).abs().max() > 1e-4


def test_values_off_any_grid_take_min_max():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    scales, zeros = int4_groups_on_grid(w, 32)
    torch.testing.assert_close(scales, (w.view(4, 2, 32).amax(-1) - w.view(4, 2, 32).amin(-1)) / 15)
    constant = torch.full((2, 32), 0.25)
    scales, zeros = int4_groups_on_grid(constant, 32)
    torch.testing.assert_close(_held(constant, scales, zeros), constant)

