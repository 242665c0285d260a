"""The LoRA products at Llama-3.1-8B's shapes on a CUDA GPU, against the base projections.

For each fused projection (qkv, o, gate_up, down) and a decode batch of 1, 16 and 256 rows
spread over 8 rank-16 adapter slots, times `lora_add` (shrink and expand, the rows grouped
by slot) and the base product (`max_kernels.linear`: the GEMV for one row, cuBLAS beyond)
in bfloat16, each as a CUDA graph of back-to-back
calls on different layers' weights (so the base weights come from memory, as in a step).
Prints one JSON line per batch size: microseconds per layer of each, and LoRA's share of
the base products (the issue's goal for batch 1: an adapter costs under 10 % of a step).

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.lora_bench
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from max.benchmark.kernels.bench_harness import graph_time_us
from max.entrypoints.process_setup import run_main
from max_kernels import LoRAGroups, linear, lora_add
from max_kernels.lora_sgmv import group_rows

HIDDEN, INTER, KV = 4096, 14336, 1024
PROJECTIONS = {  # name: (input width, output slices)
    "qkv": (HIDDEN, [(0, HIDDEN), (HIDDEN, KV), (HIDDEN + KV, KV)]),
    "o": (HIDDEN, [(0, HIDDEN)]),
    "gate_up": (HIDDEN, [(0, INTER), (INTER, INTER)]),
    "down": (INTER, [(0, HIDDEN)]),
}
SLOTS, RANK, LAYERS = 8, 16, 8


def _time_projection(k: int, slices: list[tuple[int, int]], rows: int) -> tuple[float, float]:
    """(base µs, LoRA µs) per call of one projection at `rows` decode rows."""
    n = slices[-1][0] + slices[-1][1]
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(rows, k, device=dev, dtype=dt)
    weights = [torch.randn(n, k, device=dev, dtype=dt) * k**-0.5 for _ in range(LAYERS)]
    a = [torch.randn(SLOTS, len(slices) * RANK, k, device=dev, dtype=dt) * k**-0.5 for _ in range(LAYERS)]
    b = [torch.randn(SLOTS, n, RANK, device=dev, dtype=dt) * 0.01 for _ in range(LAYERS)]
    scales = torch.full((SLOTS,), 2.0, device=dev)
    slots = np.arange(rows, dtype=np.int32) % SLOTS
    grouped, tiles = group_rows(slots)
    groups = LoRAGroups(torch.from_numpy(grouped).to(dev), torch.from_numpy(tiles).to(dev))
    token_slots = torch.from_numpy(slots).to(dev)
    outs = [linear(x, w) for w in weights]
    base = graph_time_us(lambda i: linear(x, weights[i]), LAYERS)
    lora = graph_time_us(lambda i: lora_add(outs[i], x, a[i], b[i], scales, token_slots, groups, slices), LAYERS)
    return base, lora


def _run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("lora_bench needs a CUDA GPU", file=sys.stderr)
        return 1
    for rows in args.rows:
        per = {name: _time_projection(k, slices, rows) for name, (k, slices) in PROJECTIONS.items()}
        base, lora = sum(b for b, _ in per.values()), sum(lo for _, lo in per.values())
        record = {
            "rows": rows,
            "base_us_per_layer": round(base, 2),
            "lora_us_per_layer": round(lora, 2),
            "lora_share_of_base": round(lora / base, 4),
            "per_projection_us": {name: {"base": round(b, 2), "lora": round(lo, 2)} for name, (b, lo) in per.items()},
        }
        print(json.dumps(record))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Times the products and prints one JSON line per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 256])
    return run_main(_run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
