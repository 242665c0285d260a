"""One-row products at Llama-3.1-8B's shapes on a CUDA GPU: cuBLAS against the Triton GEMV.

For each product (qkv, o, gate_up, down, the LM head) times `F.linear` (cuBLAS) and `gemv`
over a grid of launch configurations, each as a CUDA graph of back-to-back calls on
different weights (enough copies that no weight is served from L2), then the best
configurations again with programmatic dependent launch, which lets each call start
reading its weight while the previous one finishes. Prints one JSON line per product with
microseconds per call and the weight's read rate, and the best configuration.

    ./bazelw run //max/python/max/benchmark/kernels:gemv_bench -- [--quick]
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.gemv_bench   # on a GPU machine
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
from max_kernels import configure
from max_kernels.gemv import GemvConfig, default_config, gemv

SHAPES = {
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}


def _copies(n: int, k: int) -> int:
    """Weights per graph: at least 1 GB in all (20x the L2), at most 32."""
    return max(4, min(32, -(-(2**30) // (2 * n * k))))


def _configs(k: int, quick: bool) -> list[GemvConfig]:
    block_ns = (2, 4, 8) if quick else (1, 2, 4, 8, 16)
    block_ks = (1024, 2048) if quick else (256, 512, 1024, 2048, 4096)
    warps = (4,) if quick else (2, 4, 8)
    out = []
    for bn, bk, nw in itertools.product(block_ns, block_ks, warps):
        per_thread = bn * bk // (32 * nw)
        if bk <= max(256, 2 * k) and 4 <= per_thread <= 128:
            out.append(GemvConfig(bn, bk, nw))
    return out


def _bench_shape(name: str, n: int, k: int, quick: bool) -> dict:
    """cuBLAS and the GEMV's configurations on one [n, k] weight shape."""
    dtype = torch.bfloat16
    copies = _copies(n, k)
    weights = [torch.randn(n, k, dtype=dtype, device="cuda") * 0.02 for _ in range(copies)]
    x = torch.randn(1, k, dtype=dtype, device="cuda")
    outs = [torch.empty(1, n, dtype=dtype, device="cuda") for _ in range(copies)]

    def run(cfg: GemvConfig) -> float:
        return graph_time_us(lambda i: gemv(x, weights[i], config=cfg, out=outs[i]), copies)

    def tbps(us: float) -> float:
        return round(2 * n * k / (us * 1e-6) / 1e12, 2)

    cublas = graph_time_us(lambda i: F.linear(x, weights[i]), copies)
    want = F.linear(x, weights[0]).float()
    results = []
    configure(pdl=False)
    for cfg in _configs(k, quick):
        got = gemv(x, weights[0], config=cfg, out=outs[0]).float()
        err = (got - want).abs().max().item() / want.abs().max().item()
        results.append((run(cfg), cfg, err))
    results.sort(key=lambda r: r[0])
    configure(pdl=True)
    with_pdl = []
    for _, cfg, _ in results[:4]:
        for evict in (True, False):
            c = GemvConfig(cfg.block_n, cfg.block_k, cfg.num_warps, evict)
            with_pdl.append((run(c), c))
    with_pdl.sort(key=lambda r: r[0])
    default = default_config(n, k)
    default_us = run(default)
    return {
        "product": name,
        "n": n,
        "k": k,
        "copies": copies,
        "cublas_us": round(cublas, 2),
        "cublas_tbps": tbps(cublas),
        "gemv_default_pdl_us": round(default_us, 2),
        "gemv_default_pdl_tbps": tbps(default_us),
        "gemv_default": default.__dict__,
        "gemv_best_no_pdl_us": round(results[0][0], 2),
        "gemv_best_no_pdl": results[0][1].__dict__,
        "gemv_best_pdl_us": round(with_pdl[0][0], 2),
        "gemv_best_pdl_tbps": tbps(with_pdl[0][0]),
        "gemv_best_pdl": with_pdl[0][1].__dict__,
        "max_rel_err": max(r[2] for r in results),
        "top5_no_pdl": [(round(us, 2), c.block_n, c.block_k, c.num_warps) for us, c, _ in results[:5]],
    }


def main() -> None:
    """Runs the sweep and prints the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid of configurations")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        print(json.dumps(_bench_shape(name, n, k, args.quick)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(run_main(main))
