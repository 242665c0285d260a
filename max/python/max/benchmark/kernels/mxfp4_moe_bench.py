"""The MXFP4 fused MoE at gpt-oss-20b's sizes, beside bfloat16 `fused_moe` on the decoded weights.

    ./bazelw run //max/python/max/benchmark/kernels:mxfp4_moe_bench -- [--tokens 1 4 64 1024] [--paths] [--sweep]
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.mxfp4_moe_bench   # on a GPU machine

One layer of gpt-oss-20b's routed experts (E=32, k=4, H=I=2880, biases, clamped SwiGLU).
For each token count, microseconds per call of `fused_moe_mxfp4` (packed weights) and of
`fused_moe` (the same weights decoded to bfloat16, gate/up de-interleaved), each replayed
from a CUDA graph whose calls rotate over `--copies` copies of the layer's weights, so that
no call finds its experts in L2 (as in a model, where the 24 layers' experts take turns).
Bandwidth counts the bytes a call must read: each used expert's weights once (packed
blocks and scales, or bfloat16) and biases, x and the routing, and the output written; it
is compared with the device-to-device copy rate measured at the start. At one token the
used experts are the k = 4 chosen ones: 4 x 13.2 MB packed.

--paths: both paths (GEMV, tensor cores) at 1..16 tokens, to place `GEMV_MAX_TOKENS`, and
the GEMV path with its sum over the k slots left to torch (the in-kernel sum should win).
--large: 256..8192 tokens (batched decode and prefill steps): the tensor-core path with its
default and other tiles, the "dequant" path (every expert decoded once, then the bfloat16
grouped GEMMs) and bfloat16 `fused_moe` on weights decoded beforehand, in µs and TFLOP/s,
to place `DEQUANT_MIN_TOKENS` and the tiles of `pick_mma_blocks`.
--sweep: GEMV tiles at 1 and 4 tokens (gate/up tiles first, then down's with the best).
The defaults (`mxfp4_gemv.GEMV_ONE_TOKEN`, `GEMV_FEW_TOKENS`) are this sweep's best on one
H100; rerun it after changing the kernel and update them.

`bench_cases()` gives the same shapes to `//max/python/max/benchmark/kernels:bench`'s table (its reference
column is the torch path, `fused_moe_mxfp4_reference`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import torch

from max.benchmark.kernels.bench_harness import (
    BenchCase,
    bandwidth_row,
    copy_bandwidth_gbps,
    graph_time_us,
    tensor_bytes,
)
from max.entrypoints.process_setup import run_main
from max_kernels.mixture_of_experts import MoeBlocks, fused_moe
from max_kernels.mxfp4_gemv import GemvBlocks, pick_gemv_blocks
from max_kernels.mxfp4_moe import (
    _fused_moe_mxfp4,
    decode_mxfp4,
    fused_moe_mxfp4,
    fused_moe_mxfp4_reference,
)

EXPERTS, TOP_K, HIDDEN, INTER = 32, 4, 2880, 2880
KWARGS = dict(activation="clamped_swiglu", alpha=1.702, limit=7.0)
DTYPE = torch.bfloat16


@dataclasses.dataclass
class Layer:
    """One layer's routed experts, packed and decoded."""

    packed: tuple[torch.Tensor, ...]  # gate_up blocks, scales, down blocks, scales
    b_gate_up: torch.Tensor  # interleaved, as gpt-oss stores it
    b_down: torch.Tensor
    w_gate_up: torch.Tensor  # decoded bfloat16 [E, 2I, H], rows [gate; up]
    w_down: torch.Tensor
    b_gate_up_split: torch.Tensor  # [gate; up]

    def packed_bytes_per_expert(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in (*self.packed, self.b_gate_up, self.b_down))

    def decoded_bytes_per_expert(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in (self.w_gate_up, self.w_down, self.b_gate_up, self.b_down))


def make_layer(seed: int = 0, decoded: bool = True) -> Layer:
    """Random packed experts (scales 117..123: weights of magnitude ~2**-7) and, if asked,
    their bfloat16 decoding."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def packed(rows, cols):
        blocks = torch.randint(0, 256, (EXPERTS, rows, cols // 32, 16), generator=g, device="cuda", dtype=torch.uint8)
        scales = torch.randint(117, 124, (EXPERTS, rows, cols // 32), generator=g, device="cuda", dtype=torch.uint8)
        return blocks, scales

    gu, dn = packed(2 * INTER, HIDDEN), packed(HIDDEN, INTER)
    b_gate_up = (torch.randn(EXPERTS, 2 * INTER, generator=g, device="cuda") * 0.1).to(DTYPE)
    b_down = (torch.randn(EXPERTS, HIDDEN, generator=g, device="cuda") * 0.1).to(DTYPE)
    w_gate_up = w_down = torch.empty(0)
    if decoded:
        # One expert at a time: the float32 decoding of all 32 would take 3 GB.
        w_gate_up = torch.empty(EXPERTS, 2 * INTER, HIDDEN, device="cuda", dtype=DTYPE)
        w_down = torch.empty(EXPERTS, HIDDEN, INTER, device="cuda", dtype=DTYPE)
        for e in range(EXPERTS):
            w = decode_mxfp4(gu[0][e], gu[1][e]).to(DTYPE)
            w_gate_up[e] = torch.cat((w[0::2], w[1::2]))
            w_down[e] = decode_mxfp4(dn[0][e], dn[1][e]).to(DTYPE)
    split = torch.cat((b_gate_up[:, 0::2], b_gate_up[:, 1::2]), dim=1)
    return Layer((*gu, *dn), b_gate_up, b_down, w_gate_up, w_down, split)


def make_tokens(tokens: int, seed: int = 0):
    """x [T, H] and a softmax top-4 routing, renormalized."""
    g = torch.Generator(device="cuda").manual_seed(1000 + seed)
    x = torch.randn(tokens, HIDDEN, generator=g, device="cuda").to(DTYPE)
    weights, ids = torch.topk(torch.softmax(torch.randn(tokens, EXPERTS, generator=g, device="cuda"), -1), TOP_K, -1)
    return x, weights / weights.sum(-1, keepdim=True), ids


def _mxfp4_call(layer: Layer, x, w, ids, **over):
    if over:
        return _fused_moe_mxfp4(
            x, *layer.packed, w, ids, "clamped_swiglu", layer.b_gate_up, layer.b_down, 1.702, 7.0, **over
        )
    return fused_moe_mxfp4(x, *layer.packed, w, ids, b_gate_up=layer.b_gate_up, b_down=layer.b_down, **KWARGS)


def _bf16_call(layer: Layer, x, w, ids):
    return fused_moe(x, layer.w_gate_up, layer.w_down, w, ids, b_gate_up=layer.b_gate_up_split, b_down=layer.b_down, **KWARGS)


def _moved(layer: Layer, per_expert: int, x, w, ids) -> int:
    used = int(ids.unique().numel())
    return used * per_expert + 2 * tensor_bytes(x) + tensor_bytes(w, ids)


def main(argv: list[str] | None = None) -> int:
    """Prints the table (and the sweeps asked for)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 4, 64, 1024])
    parser.add_argument("--copies", type=int, default=4, help="layers' weights the calls rotate over")
    parser.add_argument("--paths", action="store_true", help="GEMV against tensor cores at 1..16 tokens")
    parser.add_argument("--sweep", action="store_true", help="GEMV tiles at 1 and 4 tokens")
    parser.add_argument("--large", action="store_true", help="paths and tiles at 256..8192 tokens")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("the benchmark needs a CUDA GPU", file=sys.stderr)
        return 1
    copy = copy_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s (read + write)")
    layers = [make_layer(seed=i) for i in range(args.copies)]
    packed_pe, decoded_pe = layers[0].packed_bytes_per_expert(), layers[0].decoded_bytes_per_expert()
    print(f"bytes per expert: {packed_pe / 1e6:.2f} MB packed, {decoded_pe / 1e6:.2f} MB bfloat16")
    print()
    print("| call | µs | MB read | GB/s | of copy rate |")
    print("|---|---|---|---|---|")
    for tokens in args.tokens:
        x, w, ids = make_tokens(tokens)
        us = graph_time_us(lambda i, x=x, w=w, ids=ids: _mxfp4_call(layers[i], x, w, ids), len(layers))
        print(bandwidth_row(f"fused_moe_mxfp4 T={tokens}", us, _moved(layers[0], packed_pe, x, w, ids), copy), flush=True)
        us = graph_time_us(lambda i, x=x, w=w, ids=ids: _bf16_call(layers[i], x, w, ids), len(layers))
        print(bandwidth_row(f"fused_moe bf16 decoded T={tokens}", us, _moved(layers[0], decoded_pe, x, w, ids), copy), flush=True)
    if args.paths:
        print()
        for tokens, path in itertools.product([1, 2, 4, 8, 16], ["gemv", "mma"]):
            x, w, ids = make_tokens(tokens)
            us = graph_time_us(lambda i, x=x, w=w, ids=ids, path=path: _mxfp4_call(layers[i], x, w, ids, path=path), len(layers))
            print(bandwidth_row(f"{path} T={tokens}", us, _moved(layers[0], packed_pe, x, w, ids), copy), flush=True)
        # The GEMV path's sum over the k slots: in its down launch (default) or by torch.
        for tokens in (1, 2, 4):
            x, w, ids = make_tokens(tokens)
            call = lambda i, x=x, w=w, ids=ids: _mxfp4_call(layers[i], x, w, ids, path="gemv", sum_slots_in_kernel=False)  # noqa: E731
            us = graph_time_us(call, len(layers))
            print(bandwidth_row(f"gemv T={tokens}, slots summed by torch", us, _moved(layers[0], packed_pe, x, w, ids), copy), flush=True)
    if args.sweep:
        _sweep(layers, copy, packed_pe)
    if args.large:
        _large(layers)
    return 0


LARGE_MMA_TILES = [
    MoeBlocks(32, 32, 64, 64, num_warps=4, num_stages=3),
    MoeBlocks(64, 32, 64, 64, num_warps=4, num_stages=3),
    MoeBlocks(64, 64, 128, 64, num_warps=8, num_stages=3),
    MoeBlocks(128, 64, 128, 64, num_warps=8, num_stages=3),
    MoeBlocks(128, 32, 64, 64, num_warps=8, num_stages=3),
]
LARGE_DEQUANT_TILES = [None, MoeBlocks(128, 64, 128, 64, num_warps=8, num_stages=3)]


def _large(layers: list[Layer]) -> None:
    """µs and TFLOP/s per call at 256..8192 tokens for each path and tile set."""
    print("\n| tokens | call | µs | TFLOP/s |")
    print("|---|---|---|---|")
    for tokens in (256, 512, 1024, 2048, 4096, 8192):
        x, w, ids = make_tokens(tokens)
        flops = 2 * tokens * TOP_K * (2 * INTER * HIDDEN + HIDDEN * INTER)
        calls = [("mma default", dict(path="mma"))]
        calls += [(f"mma {b}", dict(path="mma", mma_blocks=b)) for b in LARGE_MMA_TILES]
        calls += [(f"dequant {b or 'default'}", dict(path="dequant", mma_blocks=b)) for b in LARGE_DEQUANT_TILES]
        for name, over in calls:
            try:
                us = graph_time_us(lambda i, x=x, w=w, ids=ids, over=over: _mxfp4_call(layers[i], x, w, ids, **over), len(layers))
            except Exception as e:  # a tile that does not compile must not end the table
                print(f"| {tokens} | {name} | failed: {type(e).__name__} | |", flush=True)
                continue
            print(f"| {tokens} | {name} | {us:.1f} | {flops / us / 1e6:.0f} |", flush=True)
        us = graph_time_us(lambda i, x=x, w=w, ids=ids: _bf16_call(layers[i], x, w, ids), len(layers))
        print(f"| {tokens} | fused_moe bf16, decoded beforehand | {us:.1f} | {flops / us / 1e6:.0f} |", flush=True)


def _time_gemv(layers: list[Layer], cfg: GemvBlocks, x, w, ids) -> float:
    """µs per call of the GEMV path with tiles cfg (inf if they do not compile)."""
    try:
        return graph_time_us(lambda i: _mxfp4_call(layers[i], x, w, ids, path="gemv", gemv_blocks=cfg), len(layers))
    except Exception as e:  # a tile that does not compile must not end the sweep
        print(f"| {cfg} | failed: {type(e).__name__} | | | |")
        return float("inf")


def _sweep(layers: list[Layer], copy: float, packed_pe: int) -> None:
    """GEMV tiles: gate/up's (block_n, block_g, warps) with down's default, then down's with
    gate/up's best; the best of each token count printed last. Each sweep starts from the
    default tiles of its token count (`pick_gemv_blocks`)."""
    for tokens in (1, 4):
        best = pick_gemv_blocks(tokens * TOP_K)
        x, w, ids = make_tokens(tokens)
        moved = _moved(layers[0], packed_pe, x, w, ids)
        print(f"\nGEMV tiles at T={tokens}")
        results = {}
        for bn, bg, warps in itertools.product([4, 8, 16, 32], [8, 16], [1, 2, 4]):
            cfg = dataclasses.replace(best, block_n_gate_up=bn, block_g_gate_up=bg, num_warps=warps)
            results[cfg] = _time_gemv(layers, cfg, x, w, ids)
            print(bandwidth_row(str(cfg), results[cfg], moved, copy), flush=True)
        best = min(results, key=results.get)
        for bn, bg in itertools.product([8, 16, 32, 64], [4, 8, 16]):
            cfg = dataclasses.replace(best, block_n_down=bn, block_g_down=bg)
            results[cfg] = _time_gemv(layers, cfg, x, w, ids)
            print(bandwidth_row(str(cfg), results[cfg], moved, copy), flush=True)
        best = min(results, key=results.get)
        print(f"best at T={tokens}: {best} ({results[best]:.1f} µs)")


def bench_cases() -> list[BenchCase]:
    """gpt-oss-20b's experts at 1, 4, 64 and 1024 tokens: the packed kernels (reference:
    the torch path) and bfloat16 `fused_moe` on the decoded weights (needs a CUDA GPU)."""
    layer = make_layer()
    packed_pe, decoded_pe = layer.packed_bytes_per_expert(), layer.decoded_bytes_per_expert()
    cases = []
    for tokens in (1, 4, 64, 1024):
        x, w, ids = make_tokens(tokens)
        shape = f"T={tokens} E={EXPERTS} k={TOP_K} H={HIDDEN} I={INTER} bf16"
        cases.append(
            BenchCase(
                kernel="fused_moe_mxfp4 (gpt-oss-20b)",
                shape=shape,
                triton_fn=lambda x=x, w=w, ids=ids: _mxfp4_call(layer, x, w, ids),
                reference_fn=lambda x=x, w=w, ids=ids: fused_moe_mxfp4_reference(
                    x, *layer.packed, w, ids, b_gate_up=layer.b_gate_up, b_down=layer.b_down, **KWARGS
                ),
                bytes_moved=_moved(layer, packed_pe, x, w, ids),
            )
        )
        cases.append(
            BenchCase(
                kernel="fused_moe bf16 on decoded MXFP4 (gpt-oss-20b)",
                shape=shape,
                triton_fn=lambda x=x, w=w, ids=ids: _bf16_call(layer, x, w, ids),
                reference_fn=None,
                bytes_moved=_moved(layer, decoded_pe, x, w, ids),
            )
        )
    return cases


if __name__ == "__main__":
    sys.exit(run_main(main))
