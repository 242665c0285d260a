"""The LoRA products at Llama-3.1-8B's shapes on a CUDA GPU, against the base projections.

For each fused projection (qkv, o, gate_up, down) and each batch of `--rows`, times
`lora_add` (shrink and expand, the rows grouped by slot), the shrink alone, `lora_linear`
(the product with the LoRA product added: at one row the GEMV adds the expand itself), and
the base product (`max_kernels.linear`: the GEMV for one row, cuBLAS beyond) in bfloat16, each as a
CUDA graph of back-to-back calls on different layers' weights (so the base weights come
from memory, as in a step). A batch `256` is a decode step of 256 rows spread over 8
rank-16 adapter slots; `8192p200` is a prefill step of 8192 rows in prompts of 200 tokens,
the prompts' adapters round-robin. Prints one JSON line per batch: microseconds per layer
of each, and LoRA's share of the base products (the issue's goals: an adapter costs under
10 % of a batch-1 step, and 1000 requests keep 85 % of the base throughput).
`--block-m` and `--expand-block-n` time other tile sizes of `max_kernels.lora_sgmv` than
its rules (`tile_rows`, `_expand_block_n`).

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.lora_bench \\
        --rows 1 16 256 8192p200
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from max.benchmark.kernels.bench_harness import graph_time_us
from max.entrypoints.process_setup import run_main
from max_kernels import LoRAGroups, LoRAStack, linear, lora_add, lora_linear, lora_sgmv
from max_kernels.lora_sgmv import group_rows, lora_shrink_sgmv, tile_rows

HIDDEN, INTER, KV = 4096, 14336, 1024
PROJECTIONS = {  # name: (input width, output slices)
    "qkv": (HIDDEN, [(0, HIDDEN), (HIDDEN, KV), (HIDDEN + KV, KV)]),
    "o": (HIDDEN, [(0, HIDDEN)]),
    "gate_up": (HIDDEN, [(0, INTER), (INTER, INTER)]),
    "down": (INTER, [(0, HIDDEN)]),
}
SLOTS, RANK, LAYERS = 8, 16, 8


def token_slots(spec: str) -> np.ndarray:
    """The adapter slot of each row of a batch spec: `256` (decode rows round-robin over the
    slots) or `8192p200` (prompts of 200 rows, the prompts round-robin)."""
    rows, _, prompt = spec.partition("p")
    index = np.arange(int(rows))
    if prompt:
        index = index // int(prompt)
    return (index % SLOTS).astype(np.int32)


def _time_projection(k: int, slices: list[tuple[int, int]], slots: np.ndarray, block_m: int) -> dict[str, float]:
    """µs per call of one projection for rows in `slots`: `base` (the product alone),
    `lora` (`lora_add` after it), `shrink` (alone) and `together` (`lora_linear`: the
    product with the LoRA product added, fused into the GEMV at one row)."""
    rows = len(slots)
    n = slices[-1][0] + slices[-1][1]
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(rows, k, device=dev, dtype=dt)
    weights = [torch.randn(n, k, device=dev, dtype=dt) * k**-0.5 for _ in range(LAYERS)]
    a = [torch.randn(SLOTS, len(slices) * RANK, k, device=dev, dtype=dt) * k**-0.5 for _ in range(LAYERS)]
    b = [torch.randn(SLOTS, n, RANK, device=dev, dtype=dt) * 0.01 for _ in range(LAYERS)]
    scales = torch.full((SLOTS,), 2.0, device=dev)
    grouped, tiles = group_rows(slots, block_m)
    groups = LoRAGroups(torch.from_numpy(grouped).to(dev), torch.from_numpy(tiles).to(dev), block_m)
    device_slots = torch.from_numpy(slots).to(dev)
    outs = [linear(x, w) for w in weights]
    return {
        "base": graph_time_us(lambda i: linear(x, weights[i]), LAYERS),
        "lora": graph_time_us(lambda i: lora_add(outs[i], x, LoRAStack(a[i], b[i], scales, slices), device_slots, groups), LAYERS),
        "shrink": graph_time_us(lambda i: lora_shrink_sgmv(x, a[i], groups, RANK), LAYERS),
        "together": graph_time_us(
            lambda i: lora_linear(x, weights[i], None, LoRAStack(a[i], b[i], scales, slices), device_slots, groups), LAYERS
        ),
    }


def _run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("lora_bench needs a CUDA GPU", file=sys.stderr)
        return 1
    rule = lora_sgmv._expand_block_n
    for block_m in args.block_m or [None]:
        for block_n in args.expand_block_n or [None]:
            # The expand's column tile is chosen at each call: fix it for this configuration.
            lora_sgmv._expand_block_n = rule if block_n is None else (lambda bm, n, block_n=block_n: block_n)
            for spec in args.rows:
                slots = token_slots(spec)
                bm = tile_rows(slots) if block_m is None else block_m
                per = {name: _time_projection(k, slices, slots, bm) for name, (k, slices) in PROJECTIONS.items()}
                total = {key: sum(p[key] for p in per.values()) for key in ("base", "lora", "shrink", "together")}
                record = {
                    "rows": spec,
                    "block_m": bm,
                    "expand_block_n": block_n or "rule",
                    **{f"{key}_us_per_layer": round(v, 2) for key, v in total.items()},
                    "lora_share_of_base": round(total["lora"] / total["base"], 4),
                    # What an adapter adds to a layer's products as the model runs them.
                    "together_over_base": round(total["together"] / total["base"], 4),
                    "per_projection_us": {name: {key: round(v, 2) for key, v in p.items()} for name, p in per.items()},
                }
                print(json.dumps(record), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Times the products and prints one JSON line per batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", nargs="+", default=["1", "16", "256", "8192p200"], help="batches: 256 or 8192p200"
    )
    parser.add_argument(
        "--block-m", type=int, nargs="*", help="row tile sizes to time (default: the module's)"
    )
    parser.add_argument("--expand-block-n", type=int, nargs="*", help="expand column tiles to time")
    return run_main(_run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
