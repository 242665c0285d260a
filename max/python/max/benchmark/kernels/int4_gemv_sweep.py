"""The int4 decode products (1, 4 and 16 rows) at the Llama-3.1-8B shapes on a CUDA GPU:
every kernel variant of `max_kernels.int4_gemv` over a bounded grid of launch
configurations, each checked against the reference, timed, and the best per (shape, rows)
printed as the `TUNED` dict literal of `max_kernels/int4_gemv.py`.

Variants: `bytes` (the byte-unpacking one-row kernel, today's default for one row),
`words` (`int4_word_gemv`: 32-bit words, one-instruction nibble decode, split-K, prefetch;
1-16 rows), `tile` (the tensor-core `int4_gemm` with a 16-row tile, today's default for
more rows; `factored`: scales after the dot) and `word_tile` (`int4_word_tile`: 32-bit
words turned into 16-bit B + q pairs with two integer instructions, tensor cores, split-K). Each timing replays a CUDA graph of back-to-back products on distinct weights
(enough copies that none is served from L2), with PDL as the engine runs them. Effective
TB/s counts the codes, scales and zeros read once. The grid is bounded by a time budget
(compiles dominate); configurations past it are skipped and counted.

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.int4_gemv_sweep [--rows 1,4,16] [--budget-s 200] [--quick]
    ... --dry-run   # list the grid per shape without a GPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import triton

from max_kernels.int4_gemv import Int4GemvConfig, config_takes, default_config, int4_gemv
from max_kernels.int4_layout import dequantize_int4

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
GROUP = 128
SMS = 132  # H100 SXM; only used to bound the grid (programs per wave)


# Launch shapes worth timing (block_n, block_k, warps), from the kernels' instruction counts
# compiled for sm_90 (Triton 3.9, `cuobjdump -sass`): 16 or 32 code words per thread and loop
# step run the loop at 3.5-4 instructions per code (8 words: 5.5; the byte kernel: ~8), as
# more rows per thread share each x load; fewer warps per program leave more programs.
WORDS_ONE_ROW = [(32, 512, 4), (16, 1024, 4), (64, 256, 4), (64, 512, 8), (64, 128, 1), (128, 128, 2),
                 (32, 256, 2), (128, 256, 4)]  # fmt: skip
WORDS_NO_PREFETCH = [(32, 512, 4), (64, 128, 1), (128, 256, 4)]
WORDS_ROWS = [(16, 128, 4)]  # the 3-D multi-row path: ~14 instructions per code at 4 rows
# (block_n, block_k, warps, stages, factored): factored tiles apply the scales after the dot.
TILES = [(32, 128, 4, 3, False), (64, 64, 4, 3, False), (128, 64, 4, 3, False), (64, 128, 4, 4, False),
         (128, 64, 4, 3, True), (64, 128, 4, 3, True)]  # fmt: skip
# int4_word_tile (block_n, block_k, warps, stages): ~3.5 instructions per code at any row count.
WORD_TILES = [(64, 128, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (256, 128, 8, 3)]


def _splits(n: int, k: int, block_n: int, block_k: int, warps: int) -> list[int]:
    """Split-K factors worth timing: one split, and more where one leaves the card short of
    warps (under 8 per SM), each split at least one K slice long."""
    tiles = triton.cdiv(n, block_n)
    out = [1]
    for sk in (2, 4, 8):
        if block_k * sk <= k and tiles * (sk // 2) * warps < 8 * SMS:
            out.append(sk)
    return out


def candidates(n: int, k: int, rows: int, quick: bool = False) -> list[Int4GemvConfig]:
    """Today's default first (the baseline), then the grid, without repeats."""
    grid = [default_config(n, k, rows, GROUP)]
    word_tiles = WORD_TILES[1::2] if quick else WORD_TILES
    for bn, bk, nw, st in word_tiles[1:] if rows == 1 else word_tiles:
        sks = _splits(n, k, bn, bk, nw)
        grid += [Int4GemvConfig("word_tile", bn, bk, nw, split_k=sk, num_stages=st) for sk in sks[-3:]]
    if rows == 1:
        grid += [Int4GemvConfig("bytes", bn, bk, nw) for bn, bk, nw in ((8, 2048, 4), (16, 2048, 8))]
        shapes = WORDS_ONE_ROW[::2] if quick else WORDS_ONE_ROW
        for bn, bk, nw in shapes:
            grid += [Int4GemvConfig("words", bn, bk, nw, split_k=sk) for sk in _splits(n, k, bn, bk, nw)]
        for bn, bk, nw in [] if quick else WORDS_NO_PREFETCH:
            grid.append(Int4GemvConfig("words", bn, bk, nw, prefetch=False))
    else:
        tiles = TILES[::2] if quick else TILES
        grid += [Int4GemvConfig("tile", bn, bk, nw, num_stages=st, factored=f) for bn, bk, nw, st, f in tiles]
        for bn, bk, nw in WORDS_ROWS if rows <= 4 and not quick else []:
            grid += [Int4GemvConfig("words", bn, bk, nw, split_k=sk) for sk in _splits(n, k, bn, bk, nw)[:2]]
    seen, out = set(), []
    for cfg in grid:
        if cfg not in seen and config_takes(cfg, k, rows, GROUP):
            seen.add(cfg)
            out.append(cfg)
    return out


def describe(cfg: Int4GemvConfig) -> str:
    """A short label: kernel, tiles, warps, and the variant's own knobs."""
    text = f"{cfg.kernel} {cfg.block_n}x{cfg.block_k} w{cfg.num_warps}"
    if cfg.kernel == "words":
        text += f" split{cfg.split_k}" + ("" if cfg.prefetch else " noprefetch")
    if cfg.kernel == "word_tile":
        text += f" split{cfg.split_k} s{cfg.num_stages}"
    if cfg.kernel == "tile":
        text += f" s{cfg.num_stages}" + (" factored" if cfg.factored else "")
    return text


def literal(cfg: Int4GemvConfig) -> str:
    """The config as Python source for the `TUNED` table."""
    extra = ""
    if cfg.kernel == "words":
        extra = f", split_k={cfg.split_k}" + ("" if cfg.prefetch else ", prefetch=False")
    elif cfg.kernel == "word_tile":
        extra = f", split_k={cfg.split_k}, num_stages={cfg.num_stages}"
    elif cfg.kernel == "tile":
        extra = f", num_stages={cfg.num_stages}" + (", factored=True" if cfg.factored else "")
    return f'Int4GemvConfig("{cfg.kernel}", {cfg.block_n}, {cfg.block_k}, {cfg.num_warps}{extra})'


def _layouts(n: int, k: int, copies: int, device: str, dtype: torch.dtype) -> list[tuple]:
    g = torch.Generator(device=device).manual_seed(n + k)
    out = []
    for _ in range(copies):
        q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device, generator=g)
        s = (torch.rand(n, k // GROUP, device=device, generator=g) * 0.02 + 0.002).to(dtype)
        z = torch.randint(0, 16, (n, k // GROUP), device=device, generator=g).to(dtype)
        out.append((q, s, z))
    return out


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """bfloat16 output within its rounding plus the tile kernel's weights rounded to bfloat16
    (as `int4_gpu_test` checks)."""
    unit = 2**-7
    diff = (got.float() - want).abs()
    return bool((diff <= want.abs() * unit + want.abs().amax() * 2 * unit).all())


def sweep_shape(
    name, n, k, rows_list, quick, deadline, results, device="cuda", timer=None, dtype=torch.bfloat16
) -> int:
    """Checks and times every candidate of one shape (timer(fn, copies) -> us per call of
    fn(i) for copies weights; CUDA-graph replays by default), appending one dict per
    candidate to `results`; returns how many were skipped for time."""
    if timer is None:
        from max.benchmark.kernels.bench_harness import graph_time_us as timer

    weight_bytes = n * k // 2 + 2 * 2 * n * (k // GROUP)
    copies = max(4, min(32, -(-(2**30) // weight_bytes))) if device == "cuda" else 2
    layouts = _layouts(n, k, copies, device, dtype)
    reference_weight = dequantize_int4(*layouts[0], GROUP)
    skipped = 0
    for rows in rows_list:
        x = torch.randn(rows, k, device=device).to(dtype)
        want = x.float() @ reference_weight.t()
        for cfg in candidates(n, k, rows, quick):
            if time.monotonic() > deadline:
                skipped += 1
                continue
            try:
                ok = _close(int4_gemv(x, *layouts[0], GROUP, config=cfg), want)
                us = timer(lambda i, cfg=cfg, x=x: int4_gemv(x, *layouts[i], GROUP, config=cfg), copies)
            except Exception as exc:  # a tile the compiler refuses (registers, shared memory)
                why = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else ""
                print(f"| {name} | {rows} | {describe(cfg)} | failed: {type(exc).__name__} {why} | | |", flush=True)
                continue
            tbps = weight_bytes / (us * 1e-6) / 1e12
            results.append({"shape": name, "n": n, "k": k, "rows": rows, "cfg": cfg, "us": us, "ok": ok})
            print(f"| {name} | {rows} | {describe(cfg)} | {us:.1f} | {tbps:.2f} | {'ok' if ok else 'WRONG'} |", flush=True)
    return skipped


def summary(results: list[dict], shapes: dict, rows_list: list[int]) -> str:
    """The best checked config per (shape, rows) against today's default, the products'
    time per decode step, and the `TUNED` dict literal to paste."""
    lines = [
        "\n| shape | rows | today's default (us) | best (us) | speed-up | TB/s | best config |",
        "|---|---|---|---|---|---|---|",
    ]
    table, per_step = [], {}
    for name, (n, k) in shapes.items():
        for rows in rows_list:
            mine = [r for r in results if r["shape"] == name and r["rows"] == rows]
            good = [r for r in mine if r["ok"]]
            if not good:
                continue
            base = next((r for r in mine if r["cfg"] == default_config(n, k, rows, GROUP)), None)
            best = min(good, key=lambda r: r["us"])
            tbps = (n * k // 2 + 4 * n * (k // GROUP)) / (best["us"] * 1e-6) / 1e12
            base_us = f"{base['us']:.1f}" if base else "?"
            speedup = f"{base['us'] / best['us']:.2f}x" if base else "?"
            lines.append(
                f"| {name} | {rows} | {base_us} | {best['us']:.1f} | {speedup} | {tbps:.2f} | {describe(best['cfg'])} |"
            )
            table.append(f"    ({n}, {k}, {rows}): {literal(best['cfg'])},  # {name}: {best['us']:.1f} us")
            per_step[rows] = per_step.get(rows, 0.0) + best["us"]
    for rows, us in per_step.items():
        lines.append(f"rows {rows}: one layer's products take {us:.1f} us, 32 layers {32 * us / 1000:.2f} ms")
    lines += ["", "# paste into max/kernels/python/max_kernels/int4_gemv.py"]
    lines += ["TUNED: dict[tuple[int, int, int], Int4GemvConfig] = {", *table, "}"]
    return "\n".join(lines)


def main() -> None:
    """Parses the arguments, sweeps every shape, prints the table, the summary and the dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="of " + ", ".join(SHAPES))
    parser.add_argument("--budget-s", type=float, default=200.0, help="stop timing new configs after this")
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--dry-run", action="store_true", help="list the grid; no GPU needed")
    args = parser.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
    if args.dry_run:
        distinct = set()
        for name, (n, k) in shapes.items():
            for rows in rows_list:
                grid = candidates(n, k, rows, args.quick)
                distinct.update((c, rows if c.kernel == "words" else 0) for c in grid)
                print(f"{name} rows {rows}: {len(grid)} configs: " + "; ".join(describe(c) for c in grid))
        print(f"{len(distinct)} distinct compilations (about 1-2 s each)")
        return
    if not torch.cuda.is_available():
        sys.exit("int4_gemv_sweep needs a CUDA GPU (or --dry-run)")
    start = time.monotonic()
    from max.benchmark.kernels.bench_harness import copy_bandwidth_gbps

    copy = copy_bandwidth_gbps() / 1000
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, groups of {GROUP}")
    print(f"device-to-device copy: {copy:.2f} TB/s (read + write); the products' TB/s below count reads")
    print("\n| shape | rows | config | us | TB/s | check |\n|---|---|---|---|---|---|")
    results: list[dict] = []
    skipped = 0
    for i, (name, (n, k)) in enumerate(shapes.items()):
        # The first shape compiles most kernels: two shares of the budget, the others one
        # each; time a shape leaves unused passes to the next.
        deadline = start + args.budget_s * (i + 2) / (len(shapes) + 1)
        try:
            skipped += sweep_shape(name, n, k, rows_list, args.quick, deadline, results)
            torch.cuda.empty_cache()  # the shape's weights are gone with its frame
        except Exception as exc:  # a broken CUDA context: keep what was measured
            print(f"{name}: stopped ({type(exc).__name__}: {exc})", flush=True)
    print(f"\n{len(results)} configs timed, {skipped} skipped for time, {time.monotonic() - start:.0f} s")
    print(summary(results, shapes, rows_list))


if __name__ == "__main__":
    main()
