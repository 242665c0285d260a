"""Step 4 of `bring-up`: throughput beside transformers, with benchmark_generate's code: one
request (decode tokens/s and time to first token) and a batch of requests (ours: continuous
batching; transformers: one padded batch), greedy with EOS ignored, for each float encoding."""

from __future__ import annotations

import time
from types import SimpleNamespace

from max.entrypoints.bring_up_step import (
    BENCH,
    PASSED,
    TITLES,
    BringUpOptions,
    ModelFacts,
    Progress,
    StepResult,
    command,
)


class _BenchArgs(SimpleNamespace):
    """benchmark_generate's parsed flags: those set here, and None for the others (its
    optional features, such as a workload file or speculative decoding, stay off)."""

    def __getattr__(self, name: str):
        return None


def _prompt_ids(facts: ModelFacts) -> list[list[int]]:
    from max.benchmark.benchmark_generate import PROMPTS
    from max.pipelines.lib import TextTokenizer, resolve_model_source

    tokenizer = TextTokenizer.from_source(resolve_model_source(facts.model_path))
    if tokenizer.has_chat_template:
        return [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    return [tokenizer.encode(p) for p in PROMPTS]


def run_bench(opts: BringUpOptions, facts: ModelFacts) -> StepResult:
    """Runs step 4 (its verdict is informative: it fails only if a run crashes)."""
    from max.benchmark.benchmark_generate import bench_ours, bench_transformers
    from max.pipelines.lib import FLOAT_ENCODINGS

    result = StepResult("bench", TITLES["bench"])
    start = time.perf_counter()
    encodings = [e for e in facts.encodings if e in FLOAT_ENCODINGS]
    args = _BenchArgs(
        model_path=facts.model_path,
        devices=opts.devices,
        max_length=min(1024, facts.max_seq_len),
        concurrency=opts.bench_batch,
        page_size=128,
        new_tokens=opts.bench_new_tokens,
        hf_sequential=False,
    )
    prompts = _prompt_ids(facts)
    while len(prompts) < opts.bench_batch:
        prompts += prompts
    progress = Progress("bench", 2 * len(encodings))
    rows = []
    for enc in encodings:
        progress.advance(f"ours {enc}")
        load, single, many = bench_ours(args, prompts, enc)[:3]
        rows.append({"framework": "ours", "encoding": enc, "load_s": load, "single": single, "batch": many})
        progress.advance(f"transformers {enc}")
        hf_load, hf_single, _, hf_batch = bench_transformers(args, prompts, facts.gguf_file, facts.directory, enc)[:4]
        rows.append({"framework": "transformers", "encoding": enc, "load_s": hf_load, "single": hf_single, "batch": hf_batch})
    progress.finish()
    table = [
        f"Greedy, EOS ignored, {opts.bench_new_tokens} new tokens per request; batch: {opts.bench_batch} requests "
        "(ours: continuous batching; transformers: one padded batch); load time included as a column.",
        "",
        "| framework | encoding | batch 1 decode tok/s | ms per token | time to first token | "
        f"batch {opts.bench_batch} tok/s | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, b = r["single"], r["batch"]
        table.append(
            f"| {r['framework']} | {r['encoding']} | {s.tokens_per_second:.1f} | {1000 / s.tokens_per_second:.1f} | "
            f"{s.ttft * 1000:.0f} ms | {b.tokens_per_second:.1f} | {r['load_s']:.1f} s |"
        )
    result.markdown = "\n".join(table)
    result.details = {
        "new_tokens": opts.bench_new_tokens,
        "batch": opts.bench_batch,
        "rows": [
            {
                "framework": r["framework"],
                "encoding": r["encoding"],
                "load_seconds": r["load_s"],
                "batch1_tokens_per_second": r["single"].tokens_per_second,
                "batch1_ttft_seconds": r["single"].ttft,
                "batch_tokens_per_second": r["batch"].tokens_per_second,
            }
            for r in rows
        ],
    }
    result.commands.append(
        command(f"{BENCH}:benchmark_generate --", "--model-path", facts.model_path, "--devices", opts.devices,
                "--encodings", ",".join(encodings), "--hf-encodings", ",".join(encodings), "--new-tokens",
                str(opts.bench_new_tokens), "--concurrency", str(opts.bench_batch), "--no-hf-sequential")  # fmt: skip
    )
    result.status = PASSED
    ours = {r["encoding"]: r for r in rows if r["framework"] == "ours"}
    hf = {r["encoding"]: r for r in rows if r["framework"] == "transformers"}
    result.summary = "; ".join(
        f"{e}: batch 1 {ours[e]['single'].tokens_per_second:.0f} vs {hf[e]['single'].tokens_per_second:.0f} tok/s, "
        f"batch {opts.bench_batch} {ours[e]['batch'].tokens_per_second:.0f} vs {hf[e]['batch'].tokens_per_second:.0f}"
        for e in ours
    ) + " (ours vs transformers)"
    result.seconds = time.perf_counter() - start
    return result
