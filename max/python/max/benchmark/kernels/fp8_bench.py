"""FP8 products at decode shapes on a CUDA GPU: which kernel reads the weight fastest.

For each Llama-3.1-8B product (qkv, o, gate_up, down) and a few rows (1, 4, 16), times
bfloat16 `F.linear` (cuBLAS), `fp8_linear`'s tensor-core path (row quantization plus
`torch._scaled_mm`), the same with the operands swapped (the weight as the tall operand,
the rows padded to 16) and the Triton weight-only kernel over a grid of tile shapes. Each
timing replays a CUDA graph of 32 calls on 32 different weights, so that no weight is
served from L2. Prints one JSON line per (shape, rows) with microseconds per call and the
weight's read rate.

    ./bazelw run //max/python/max/benchmark/kernels:fp8_bench -- [--rows 1,4,16] [--quick]
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.fp8_bench   # on a GPU machine
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
from max_kernels.fp8 import (
    fp8_gemv,
    fp8_linear,
    fp8_weight_only_linear,
    quantize_fp8_rows,
    quantize_fp8_weight,
)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
COPIES = 32


def _time(fn) -> float:
    """Microseconds per call of fn(i) over the COPIES weights, from a CUDA graph."""
    return graph_time_us(fn, COPIES)


def _swapped(x, w_q, w_s):
    """y = x @ w.T computed as (w @ x.T).T: the weight is the tall operand of `_scaled_mm`."""
    m = x.shape[0]
    x_q, x_s = quantize_fp8_rows(x)
    pad = 16 - m if m < 16 else (-m) % 16
    if pad:
        x_q = torch.cat([x_q, x_q.new_zeros(pad, x_q.shape[1])])
        x_s = torch.cat([x_s, x_s.new_ones(pad)])
    y = torch._scaled_mm(w_q, x_q.t(), scale_a=w_s[:, None], scale_b=x_s[None, :], out_dtype=torch.bfloat16)
    return y.t()[:m]


def _bench_shape(name: str, n: int, k: int, rows: list[int], configs: list[tuple]) -> None:
    """One JSON line per row count for the product `name` (weight [n, k])."""
    w = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
    q = [quantize_fp8_weight(t) for t in w]
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        row: dict = {"shape": name, "n": n, "k": k, "rows": m}
        # Each lambda runs inside _time, before x changes.
        row["bf16_cublas"] = _time(lambda i, x=x: F.linear(x, w[i]))
        row["fp8_scaled_mm"] = _time(lambda i, x=x: fp8_linear(x, *q[i]))
        try:
            row["fp8_scaled_mm_swapped"] = _time(lambda i, x=x: _swapped(x, *q[i]))
        except RuntimeError as e:
            row["fp8_scaled_mm_swapped"] = str(e)[:120]
        best = None
        for bn, bk, nw, ns in configs:
            tiles = dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
            try:
                us = _time(lambda i, x=x, tiles=tiles: fp8_weight_only_linear(x, *q[i], **tiles))
            except Exception as e:  # a tile shape the compiler refuses (shared memory)
                us = float("inf")
                row.setdefault("refused", []).append([bn, bk, nw, ns, type(e).__name__])
            if best is None or us < best[0]:
                best = (us, tiles)
        row["fp8_triton_best"] = {"us": best[0], **best[1]}
        if m == 1:
            gbest = None
            for bn, bk, nw, ns in itertools.product((8, 16, 32), (256, 512, 1024), (4, 8), (2, 3, 4)):
                tiles = dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
                try:
                    us = _time(lambda i, x=x, tiles=tiles: fp8_gemv(x, *q[i], **tiles))
                except Exception:  # a tile shape the compiler refuses
                    continue
                if gbest is None or us < gbest[0]:
                    gbest = (us, tiles)
            if gbest is not None:
                row["fp8_gemv_best"] = {"us": gbest[0], **gbest[1], "tb_s": n * k / gbest[0] / 1e6}
        row["fp8_triton_default"] = _time(lambda i, x=x: fp8_weight_only_linear(x, *q[i]))
        row["bf16_tb_s"] = n * k * 2 / row["bf16_cublas"] / 1e6
        row["fp8_triton_tb_s"] = n * k / row["fp8_triton_default"] / 1e6
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--quick", action="store_true", help="fewer Triton tile shapes")
    args = parser.parse_args()
    torch.manual_seed(0)
    configs = list(itertools.product((16, 32, 64), (256, 512), (4, 8), (3, 4)))
    if args.quick:
        configs = list(itertools.product((16, 32), (256, 512), (4,), (4,)))
    rows = [int(r) for r in args.rows.split(",")]
    for name, (n, k) in SHAPES.items():
        _bench_shape(name, n, k, rows, configs)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(run_main(main))
