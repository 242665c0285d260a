"""Verifies named pipelines end to end: torch reference, then this framework teacher-forced
along it, then the pipeline's own KL and cosine thresholds.

    verify_pipelines --pipeline SmolLM2-135M-Instruct-float32 [--pipeline ...] --devices cpu
                     [--prompts prompts.json] [--report report.md]

Prints a table of OK / INVALID / ERROR per pipeline; exits 0 only if all are OK (2 if some
are INVALID, 1 if some could not run).
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from max.errors import MaxError
from max.verification.cli import UsageErrorParser, run_tool
from max.verification.frameworks import FrameworkSettings, run_framework
from max.verification.logit_metrics import Criteria, compare
from max.verification.named_pipelines import (
    NAMED_PIPELINES,
    kv_cache_dtype_of,
    parse_pipeline_and_encoding,
    split_encoding,
)
from max.verification.prompts import VerificationPrompt, read_prompts


@dataclass
class Outcome:
    """One row of the table."""

    name: str
    status: str  # OK, INVALID, ERROR
    max_kl: float | None
    max_cos: float | None
    kl_threshold: float
    cos_threshold: float
    seconds: float
    detail: str = ""


def verify_one(
    spec: str,
    device: str,
    num_steps: int,
    kernels: str = "auto",
    tensor_parallel_size: int = 1,
    prompts: list[VerificationPrompt] | None = None,
    lora: str | None = None,
) -> Outcome:
    """Runs one `Name-encoding` pipeline on `prompts` (default: the pipeline's own); never raises."""
    start = time.perf_counter()
    pipeline, encoding = parse_pipeline_and_encoding(spec)
    limits = pipeline.thresholds[encoding]
    base_encoding, quantization = split_encoding(encoding)
    try:
        settings = FrameworkSettings(
            model_path=pipeline.model_path(),
            reference_model_path=pipeline.reference_path(),
            device=device,
            encoding=base_encoding,
            quantization=quantization,
            kv_cache_dtype=kv_cache_dtype_of(encoding),
            num_steps=num_steps,
            max_length=pipeline.max_length,
            kernels=kernels,
            tensor_parallel_size=tensor_parallel_size,
            lora=lora,
        )
        prompts = prompts or pipeline.prompts()
        reference = run_framework("torch", settings, prompts)
        target = run_framework("max", settings, prompts, reference)
        result = compare(target, reference, Criteria(metrics=("kl", "cos"), kl_threshold=limits.kl, cos_threshold=limits.cos))
        status = "OK" if result.passed else "INVALID"
        detail = "; ".join(result.failures)
        return Outcome(spec, status, result.max_kl, result.max_cos, limits.kl, limits.cos, time.perf_counter() - start, detail)
    except Exception as e:  # a crash of one pipeline is reported, the others still run
        if not isinstance(e, MaxError):
            traceback.print_exc()
        return Outcome(spec, "ERROR", None, None, limits.kl, limits.cos, time.perf_counter() - start, f"{type(e).__name__}: {e}")


def format_table(outcomes: list[Outcome], device: str) -> str:
    """The Markdown report."""
    lines = [
        f"Device: {device}",
        "",
        "| pipeline | status | max KL | max cos dist | KL threshold | cos threshold | time |",
        "|---|---|---|---|---|---|---|",
    ]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.2e}"

    for o in outcomes:
        lines.append(
            f"| {o.name} | {o.status} | {num(o.max_kl)} | {num(o.max_cos)} | {o.kl_threshold:.0e} | "
            f"{o.cos_threshold:.0e} | {o.seconds:.0f} s |"
        )
    notes = [f"- {o.name}: {o.detail}" for o in outcomes if o.detail]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = UsageErrorParser(prog="verify_pipelines", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline",
        action="append",
        help="Name-encoding, repeatable (default: every pipeline in float32); known: "
        + ", ".join(f"{p.display_name}-{e}" for p in NAMED_PIPELINES for e in p.thresholds),
    )
    parser.add_argument("--devices", default="cpu", help="cpu, gpu or gpu:N")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument(
        "--kernels",
        choices=["auto", "torch"],
        default="auto",
        help="'torch': run ours on the torch reference ops instead of the GPU kernels (for comparison)",
    )
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="run ours on this many ranks (GPUs, or CPU processes)"
    )
    parser.add_argument(
        "--prompts",
        help="a prompts file for every pipeline (as generate_llm_logits --prompts: a JSON list of strings and "
        "{'prompt': str, 'images': [file, ...]}); default: each pipeline's own prompts",
    )
    parser.add_argument("--lora", metavar="PATH", help="verify every pipeline with this LoRA adapter (PEFT folder or repo id)")
    parser.add_argument("--report", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    specs = args.pipeline or [f"{p.display_name}-float32" for p in NAMED_PIPELINES if "float32" in p.thresholds]
    for spec in specs:
        parse_pipeline_and_encoding(spec)  # unknown names are usage errors, before any run
    prompts = read_prompts(args.prompts) if args.prompts else None
    outcomes = []
    for spec in specs:
        print(f"verifying {spec} on {args.devices}...", file=sys.stderr)
        outcomes.append(verify_one(spec, args.devices, args.num_steps, args.kernels, args.tensor_parallel_size, prompts, args.lora))
    table = format_table(outcomes, f"{args.devices} (kernels: {args.kernels})")
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n")
    if any(o.status == "ERROR" for o in outcomes):
        return 1
    return 2 if any(o.status == "INVALID" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
