"""int4 products at the Llama-3.1-8B shapes on a CUDA GPU: the Triton GEMV / GEMM against
bfloat16 cuBLAS, over a grid of tile shapes.

For each product (qkv, o, gate_up, down) and row count, times bfloat16 `F.linear`
(cuBLAS), the default int4 dispatch (`max_kernels.int4_linear`: the GEMV up to 16 rows,
the GEMM above) and the int4 kernels over tile shapes; prints one JSON line per (shape,
rows) with microseconds per call, the best tiles and the weight's read rate. Each timing
replays a CUDA graph of 32 calls on 32 different weights, so no weight is served from L2.
Weights in our int4 layout, groups of 128 (GPTQ's usual).

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.int4_bench [--rows 1,4,16,256,2048] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch
import torch.nn.functional as F

from max.benchmark.kernels.bench_harness import graph_time_us
from max.entrypoints.process_setup import run_main
from max_kernels import int4_linear
from max_kernels.int4_gemm import int4_gemm
from max_kernels.int4_gemv import GEMV_MAX_ROWS, int4_gemv
from max_kernels.int4_layout import quantize_int4_groups

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
COPIES = 32
GROUP = 128


def _best(fn, grid) -> dict | None:
    """The fastest tiles of `grid` for fn(i, **tiles) (shapes the compiler refuses skipped)."""
    best = None
    for tiles in grid:
        try:
            us = graph_time_us(lambda i, tiles=tiles: fn(i, **tiles), COPIES)
        except Exception:  # a tile shape the compiler refuses (shared memory, registers)
            continue
        if best is None or us < best["us"]:
            best = {"us": us, **tiles}
    return best


def _bench_shape(name: str, n: int, k: int, rows: list[int], quick: bool) -> None:
    w = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
    layouts = []
    for t in w:
        q, s, z = quantize_int4_groups(t, GROUP)
        layouts.append((q, s.bfloat16(), z.bfloat16()))
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        row: dict = {"shape": name, "n": n, "k": k, "rows": m}
        row["bf16_cublas"] = graph_time_us(lambda i, x=x: F.linear(x, w[i]), COPIES)
        row["int4_default"] = graph_time_us(lambda i, x=x: int4_linear(x, *layouts[i], GROUP), COPIES)
        if m == 1:
            grid = itertools.product((8, 16), (512, 1024, 2048, 4096), (4, 8))
            grid = [dict(block_n=a, block_k=b, num_warps=c) for a, b, c in grid]
            best = _best(lambda i, x=x, **t: int4_gemv(x, *layouts[i], GROUP, **t), grid[:6] if quick else grid)
        else:
            bm = (16,) if m <= GEMV_MAX_ROWS else (32, 64, 128)
            grid = itertools.product(bm, (32, 64, 128), (64, 128), (4, 8), (2, 3, 4))
            grid = [dict(block_m=a, block_n=b, block_k=c, num_warps=d, num_stages=e) for a, b, c, d, e in grid]
            best = _best(lambda i, x=x, **t: int4_gemm(x, *layouts[i], GROUP, **t), grid[:6] if quick else grid)
        row["int4_best"] = best
        row["bf16_tb_s"] = n * k * 2 / row["bf16_cublas"] / 1e6
        row["int4_tb_s"] = n * k / 2 / row["int4_default"] / 1e6
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16,256,2048")
    parser.add_argument("--quick", action="store_true", help="a few tile shapes only")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [int(r) for r in args.rows.split(",")]
    for name, (n, k) in SHAPES.items():
        _bench_shape(name, n, k, rows, args.quick)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(run_main(main))
