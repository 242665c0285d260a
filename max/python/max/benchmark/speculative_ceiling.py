"""The ceiling of speculative decoding's machinery: batch-1 decode with an oracle draft.

An oracle proposer (`speculative.oracle_proposer`, test-only) proposes the target's own
greedy continuation, read from a run without speculation, so every draft that the verify
step reproduces is accepted. Tokens/s at k = 0 (plain decode: CUDA graphs), 1, 2, 4, 8 then
show what a drafter reaching that acceptance length (EAGLE-3 heads, a draft model) would
give at most, with the drafter's own cost left out. Verify steps (1 + k tokens per request)
replay CUDA graphs bucketed by draft count (the engine is built for the largest k, so
its graphs cover every k measured). Default: the Llama-3.1-8B shape with dummy weights, on
the GPU, in bfloat16:

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.speculative_ceiling \\
        [--model-path max/python/max/benchmark/configs/Llama-3.1-8B] [--ks 1,2,4,8] [--new-tokens 256]

Every run's output is compared with the plain run's (`identical`). In bfloat16 a verify
step's numerics (the prefill kernels over 1 + k tokens) can pick another argmax than the
decode kernels did where the top logits nearly tie (common with dummy weights); from there
on the request no longer follows the reference and gets no drafts, so the run measures
plain decoding. The oracle's reference therefore settles first (`--settle` runs): each run
whose output departs from its reference makes that output the next reference (the output
of greedy verification is deterministic, so the agreeing prefix only grows), until a run
reproduces its reference: the target's own greedy continuation under speculation.

Settling need not converge: where a step rejects a draft, the next steps' chunks start at
other positions, and in bfloat16 a token's numerics depend on its chunk, so each new
reference can depart again somewhere else (on one H100, 12 runs never settled at k = 2, 4
or 8). The table therefore also reports the machinery's ceiling from the steps
themselves: the median time of a verify step whose k drafts were all accepted (each
synchronous, so its wall time is its cost), and (k + 1) tokens over that time against
plain decoding's tokens/s. That is what a drafter accepted in full would give, whatever
the share of such steps in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from max.benchmark.model_configs import CONFIGS_DIR
from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_result_file_arg
from max.errors import MaxError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(
    engine, request_id: str, prompt: list[int], new_tokens: int, steps: list[tuple[float, int]] | None = None
) -> tuple[list[int], float]:
    """One request alone: (its tokens, decode seconds after the first token). `steps`, if
    given, receives (seconds, tokens emitted) of every step after the first token."""
    from max.pipelines.lib import SamplingParams

    engine.add_request(request_id, prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True))
    tokens: list[int] = []
    first = None
    while engine.has_unfinished():
        start = time.perf_counter()
        emitted = 0
        for out in engine.step():
            tokens.extend(out.new_token_ids)
            emitted += len(out.new_token_ids)
            if first is None and out.new_token_ids:
                _sync(engine.model.device)
                first = time.perf_counter()
                emitted = -1  # the prefill's step: not a decode step
        if steps is not None and emitted >= 0 and first is not None:
            _sync(engine.model.device)
            steps.append((time.perf_counter() - start, emitted))
    _sync(engine.model.device)
    return tokens, time.perf_counter() - first


def full_verify_ms(steps: list[tuple[float, int]], k: int) -> float | None:
    """Median milliseconds of the steps that emitted k + 1 tokens (every draft accepted),
    None if there were none."""
    full = sorted(seconds for seconds, emitted in steps if emitted == k + 1)
    return 1e3 * full[len(full) // 2] if full else None


def _verify_replays(engine) -> int:
    """Verify steps that replayed a CUDA graph so far."""
    verify = getattr(engine.runner, "verify", None)
    return verify.num_replays if verify is not None else 0


def _speculate(engine, k: int, references: dict[str, list[int]], vocab_size: int, corrupt_every: int) -> None:
    """Switches the engine to the oracle at k drafts per step (k = 0: plain decoding)."""
    from max.pipelines.lib.speculative.oracle_proposer import OracleProposer
    from max.pipelines.lib.speculative.speculative_config import parse_speculative_config
    from max.pipelines.lib.speculative.speculator import Speculator

    if k == 0:
        engine.speculator, engine.outputs.spec_stats = None, None
        return
    config = parse_speculative_config({"method": "ngram", "num_speculative_tokens": k})
    engine.speculator = Speculator(config, OracleProposer(references, vocab_size, corrupt_every))
    engine.outputs.spec_stats = engine.speculator.stats


def settle_reference(
    output_for: Callable[[list[int], int], list[int]], reference: list[int], max_runs: int
) -> tuple[list[int], int]:
    """(reference, runs that changed it): while a run's output (`output_for(reference,
    run)`) departs from its reference, that output becomes the reference, at most
    `max_runs` runs."""
    for run in range(max_runs):
        tokens = output_for(reference, run)
        if tokens == reference:
            return reference, run
        reference = tokens
    return reference, max_runs


def run(args: argparse.Namespace) -> list[dict]:
    """Plain decoding, then the oracle at each k; one row per k."""
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import PipelineConfig, build_engine, resolve_model

    ks = [int(k) for k in args.ks.split(",")]
    if any(k < 1 for k in ks):
        raise MaxError("--ks lists draft counts of at least 1")
    config = PipelineConfig(
        model_path=args.model_path,
        load_format=args.load_format,
        devices=args.devices,
        quantization_encoding=args.quantization_encoding,
        max_length=args.max_length,
        max_batch_size=4,
        skip_tokenizer_init=True,
        # Built for the largest k: its verify graphs cover every k of the run.
        speculative_config={"method": "ngram", "num_speculative_tokens": max(ks)},
    )
    config.validate()
    engine = build_engine(resolve_model(config, register_all()))
    vocab = engine.vocab_size
    _speculate(engine, 0, {}, vocab, 0)  # plain decoding until the oracle takes over
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, vocab, (args.prompt_len,), generator=generator).tolist()
    _decode(engine, "warm-up", prompt[:16], 8)
    plain, plain_s = min((_decode(engine, f"plain-{i}", prompt, args.new_tokens) for i in range(args.repeats)), key=lambda r: r[1])
    plain_rate = (len(plain) - 1) / plain_s
    rows = [{"k": 0, "tokens_per_s": plain_rate, "speedup": 1.0, "identical": True}]
    for k in ks:

        def speculative_output(reference: list[int], run: int, k: int = k) -> list[int]:
            rid = f"k{k}-settle{run}"
            _speculate(engine, k, {rid: prompt + reference}, vocab, args.corrupt_every)
            return _decode(engine, rid, prompt, args.new_tokens)[0]

        reference, settle_runs = settle_reference(speculative_output, plain, args.settle)
        best = None
        for i in range(args.repeats + 1):  # the first run compiles the verify shapes
            rid = f"k{k}-{i}"
            _speculate(engine, k, {rid: prompt + reference}, vocab, args.corrupt_every)
            replays = _verify_replays(engine)
            steps: list[tuple[float, int]] = []
            tokens, seconds = _decode(engine, rid, prompt, args.new_tokens, steps)
            stats = engine.speculator.stats
            if i > 0 and (best is None or seconds < best[1]):
                best = (tokens, seconds, stats.copy(), _verify_replays(engine) - replays, steps)
        tokens, seconds, stats, replays, steps = best
        rate = (len(tokens) - 1) / seconds
        verify_ms = full_verify_ms(steps, k)
        ceiling = (k + 1) / (verify_ms / 1e3) if verify_ms else None
        rows.append(
            {
                "k": k,
                "tokens_per_s": rate,
                "speedup": rate / plain_rate,
                "full_verify_steps": sum(1 for _, emitted in steps if emitted == k + 1),
                "full_verify_ms": verify_ms,
                "ceiling_tokens_per_s": ceiling,
                "ceiling_speedup": ceiling / plain_rate if ceiling else None,
                "identical": tokens == plain,
                "acceptance_rate": stats.acceptance_rate,
                "mean_accepted_length": stats.mean_accepted_length,
                "verify_steps": stats.num_drafts,
                "verify_graph_replays": replays,
                "settle_runs": settle_runs,
            }
        )
    _speculate(engine, 0, {}, vocab, 0)
    engine.close()
    return rows


def format_table(rows: list[dict], device: str) -> str:
    """The Markdown table of the rows."""
    lines = [
        f"batch-1 decode with an oracle draft ({device}); k = 0 is plain decoding",
        "",
        "| k | tokens/s | vs plain | acceptance rate | mean accepted length | output identical | verify steps (graph) "
        "| all-accepted verify step ms (steps) | ceiling tokens/s | ceiling vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['acceptance_rate']:.3f}" if "acceptance_rate" in r else ""
        length = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else ""
        steps = f"{r['verify_steps']} ({r['verify_graph_replays']})" if "verify_steps" in r else ""
        full = f"{r['full_verify_ms']:.2f} ({r['full_verify_steps']})" if r.get("full_verify_ms") else ""
        ceiling = f"{r['ceiling_tokens_per_s']:.1f}" if r.get("ceiling_tokens_per_s") else ""
        ceiling_x = f"{r['ceiling_speedup']:.2f}x" if r.get("ceiling_speedup") else ""
        lines.append(
            f"| {r['k']} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | {rate} | {length} | {r['identical']} | {steps} "
            f"| {full} | {ceiling} | {ceiling_x} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses the flags, runs, prints the table (and writes JSON with --result-file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=str(Path(CONFIGS_DIR) / "Llama-3.1-8B"))
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--devices", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quantization-encoding", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--ks", default="1,2,4,8", help="draft counts to measure (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2, help="runs per k; the fastest counts")
    parser.add_argument(
        "--settle",
        type=int,
        default=12,
        help="runs that may replace the oracle's reference by the speculative run's own output (0: the plain run's only)",
    )
    parser.add_argument("--corrupt-every", type=int, default=0, help="make every m-th oracle draft wrong (0: none)")
    add_result_file_arg(parser, "also write the rows here as JSON", json_alias=True)
    args = parser.parse_args(argv)

    def _run(args: argparse.Namespace) -> int:
        device = torch.cuda.get_device_name() if args.devices != "cpu" else "cpu"
        rows = run(args)
        print(format_table(rows, device))
        if args.result_file:
            with open(args.result_file, "w") as f:
                json.dump({"device": device, "model_path": args.model_path, "rows": rows}, f, indent=2)
        return 0

    return run_main(_run, args, hub_offline=True)


if __name__ == "__main__":
    sys.exit(main())
