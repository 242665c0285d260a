"""The ceiling of speculative decoding's machinery: batch-1 decode with an oracle draft.

An oracle proposer (`speculative.oracle_proposer`, test-only) proposes the target's own
greedy continuation, read from a run without speculation, so every draft that the verify
step reproduces is accepted. Tokens/s at k = 0 (plain decode: CUDA graphs), 1, 2, 4, 8 then
show what a drafter reaching that acceptance length (EAGLE-3 heads, a draft model) would
give at most, with the drafter's own cost left out. Verify steps (1 + k tokens per request)
run eagerly, without CUDA graphs. Default: the Llama-3.1-8B shape with dummy weights, on
the GPU, in bfloat16:

    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.speculative_ceiling \\
        [--model-path max/python/max/benchmark/configs/Llama-3.1-8B] [--ks 1,2,4,8] [--new-tokens 256]

Every run's output is compared with the plain run's (`identical`); the acceptance rate is
below 1 only where the verify step's numerics (the prefill kernels over 1 + k tokens) pick
another argmax than the decode kernels did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from max.benchmark.model_configs import CONFIGS_DIR
from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_result_file_arg
from max.errors import MaxError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(engine, request_id: str, prompt: list[int], new_tokens: int) -> tuple[list[int], float]:
    """One request alone: (its tokens, decode seconds after the first token)."""
    from max.pipelines.lib import SamplingParams

    engine.add_request(request_id, prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True))
    tokens: list[int] = []
    first = None
    while engine.has_unfinished():
        for out in engine.step():
            tokens.extend(out.new_token_ids)
            if first is None and out.new_token_ids:
                _sync(engine.model.device)
                first = time.perf_counter()
    _sync(engine.model.device)
    return tokens, time.perf_counter() - first


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
    )
    config.validate()
    engine = build_engine(resolve_model(config, register_all()))
    vocab = engine.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, vocab, (args.prompt_len,), generator=generator).tolist()
    _decode(engine, "warm-up", prompt[:16], 8)
    plain, plain_s = min((_decode(engine, f"plain-{i}", prompt, args.new_tokens) for i in range(args.repeats)), key=lambda r: r[1])
    plain_rate = (len(plain) - 1) / plain_s
    rows = [{"k": 0, "tokens_per_s": plain_rate, "speedup": 1.0, "identical": True}]
    for k in ks:
        best = None
        for i in range(args.repeats + 1):  # the first run compiles the verify shapes
            rid = f"k{k}-{i}"
            _speculate(engine, k, {rid: prompt + plain}, vocab, args.corrupt_every)
            tokens, seconds = _decode(engine, rid, prompt, args.new_tokens)
            stats = engine.speculator.stats
            if i > 0 and (best is None or seconds < best[1]):
                best = (tokens, seconds, stats.copy())
        tokens, seconds, stats = best
        rate = (len(tokens) - 1) / seconds
        rows.append(
            {
                "k": k,
                "tokens_per_s": rate,
                "speedup": rate / plain_rate,
                "identical": tokens == plain,
                "acceptance_rate": stats.acceptance_rate,
                "mean_accepted_length": stats.mean_accepted_length,
                "verify_steps": stats.num_drafts,
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
        "| k | tokens/s | vs plain | acceptance rate | mean accepted length | output identical |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r['acceptance_rate']:.3f}" if "acceptance_rate" in r else ""
        length = f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else ""
        lines.append(f"| {r['k']} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | {rate} | {length} | {r['identical']} |")
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
