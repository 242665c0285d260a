"""Device experiment (not part of the product): decode attention with one page id per key
tile (PAGE_TILES) beside the per-token page lookup, at the serving shapes (Llama-3.1-8B:
Hq 32, Hkv 8, D 128, bfloat16, page 128), contexts of ~230 and ~1000 keys, the split
counts the decode graphs use. Prints GB/s (keys and values read once) per variant."""

import torch
import triton

from max_kernels import decode_attention as da

torch.manual_seed(0)
dev = "cuda"
HQ, HKV, D, PAGE = 32, 8, 128, 128


def case(batch, ctx_lo, ctx_hi):
    ctx = torch.randint(ctx_lo, ctx_hi + 1, (batch,), dtype=torch.int32)
    pages_per = (-(-ctx // PAGE)).tolist()
    total_pages = sum(pages_per)
    # Enough cache that the step's keys do not sit in L2 from the previous call: four
    # independent copies of the step's pages, rotated.
    num_pages = 4 * total_pages + 8
    k = torch.randn(num_pages, PAGE, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    tables = []
    for _ in range(4):
        perm = torch.randperm(num_pages)[: total_pages]
        table = torch.zeros(batch, max(pages_per), dtype=torch.int32)
        i = 0
        for b, n in enumerate(pages_per):
            table[b, :n] = perm[i : i + n]
            i += n
        tables.append(table.to(dev))
    q = torch.randn(batch, HQ, D, device=dev, dtype=torch.bfloat16)
    ctx = ctx.to(dev)
    splits = da.default_num_splits(batch, HKV, 4096)
    nbytes = int(ctx.sum()) * HKV * D * 2 * 2
    return q, k, v, tables, ctx, splits, nbytes


def time_variant(q, k, v, tables, ctx, splits, page_tiles, warps, stages):
    da.PAGE_TILES = page_tiles
    out = torch.empty_like(q)
    it = [0]

    def fn():
        it[0] = (it[0] + 1) % 4
        da.decode_attention(q, k, v, tables[it[0]], ctx, 0.088, num_splits=splits, out=out)

    fn()
    ref = out.clone()
    da.PAGE_TILES = True
    return triton.testing.do_bench_cudagraph(fn, rep=200), ref


rows = []
for batch, lo, hi in [(1, 200, 460), (64, 200, 380), (256, 200, 380), (512, 200, 380), (256, 900, 1100)]:
    q, k, v, tables, ctx, splits, nbytes = case(batch, lo, hi)
    results = {}
    outs = {}
    for pt in (False, True):
        ms, out = time_variant(q, k, v, tables, ctx, splits, pt, 4, 2)
        results[pt] = ms
        outs[pt] = out
    same = torch.equal(outs[False], outs[True])
    rows.append((batch, f"{lo}-{hi}", splits, results[False] * 1e3, results[True] * 1e3,
                 nbytes / results[False] / 1e6, nbytes / results[True] / 1e6, same))
print("| batch | keys | splits | per-token lookup us | page tiles us | GB/s before | GB/s after | same output |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.0f} | {r[6]:.0f} | {r[7]} |")
