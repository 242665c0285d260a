"""Structured outputs' cost to the rest of the batch: throughput of unconstrained requests
alone, and with constrained (json_schema) requests in the same batch.

Runs the engine in-process on two batches of the same size: N free requests (EOS ignored,
a fixed number of tokens each) plus K more free ones, then the same N plus K constrained
ones. It reports the N requests' tokens/s in both runs, the step time, and their ratio (the goal: the free
requests keep 90 % or more of their throughput). On a GPU, steps holding a constrained
request are read synchronously (no overlap), which is part of the cost measured.

    python -m max.benchmark.benchmark_structured [--model-path PATH] [--devices gpu] \\
        [--num-free 48] [--num-constrained 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time

from max.entrypoints.process_setup import run_main
from max.pipelines.architectures import register_all
from max.pipelines.lib import (
    PipelineConfig,
    SamplingParams,
    build_engine,
    load_tokenizer,
    resolve_model,
)
from max.pipelines.lib.sampling.structured_output import StructuredOutput

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
    },
    "required": ["name", "age", "tags"],
}


def _run(engine, prompt: list[int], num_free: int, num_others: int, new_tokens: int, constrained: bool) -> dict[str, float]:
    """Runs the batch to its end; returns the N free requests' tokens/s and the step time."""
    free = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    constraint = StructuredOutput("json_schema", json.dumps(SCHEMA), strict=True) if constrained else None
    for i in range(num_free):
        engine.add_request(f"free-{i}", prompt, free)
    for i in range(num_others):
        params = SamplingParams(
            max_new_tokens=new_tokens, temperature=1.0, seed=i, ignore_eos=not constrained, structured_output=constraint
        )
        engine.add_request(f"other-{i}", prompt, params)
    free_tokens = steps = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id.startswith("free-"):
                free_tokens += len(out.new_token_ids)
        steps += 1
    elapsed = time.perf_counter() - start
    return {"free_tokens_per_s": free_tokens / elapsed, "ms_per_step": 1000 * elapsed / max(steps, 1), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--num-free", type=int, default=48)
    parser.add_argument("--num-constrained", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case; the best is kept")
    args = parser.parse_args(argv)
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    settings = dict(devices=args.devices, max_length=1024, max_batch_size=args.num_free + args.num_constrained)
    if args.model_path:
        settings["model_path"] = args.model_path
    resolved = resolve_model(PipelineConfig(**settings), register_all())
    engine = build_engine(resolved)
    prompt = load_tokenizer(resolved).encode("Describe a person as JSON:")
    _run(engine, prompt, 2, 1, 8, True)  # warm-up: kernels, the grammar backend, the schema's grammar
    results = {}
    for label, constrained in (("free only", False), ("with constrained", True)):
        runs = [
            _run(engine, prompt, args.num_free, args.num_constrained, args.new_tokens, constrained)
            for _ in range(args.repeats)
        ]
        results[label] = max(runs, key=lambda r: r["free_tokens_per_s"])
        r = results[label]
        print(f"{label:>17}: {r['free_tokens_per_s']:9.1f} free tok/s, {r['ms_per_step']:7.1f} ms/step, {r['steps']} steps")
    ratio = results["with constrained"]["free_tokens_per_s"] / results["free only"]["free_tokens_per_s"]
    print(f"free requests keep {100 * ratio:.1f} % of their throughput with {args.num_constrained} constrained beside them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
