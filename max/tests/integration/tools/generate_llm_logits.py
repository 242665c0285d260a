"""Greedy logits of a pipeline, step by step, from this framework or a PyTorch reference.

    generate_llm_logits --framework max|torch --pipeline NAME|PATH --output FILE
        [--device cpu|gpu|gpu:N] [--encoding float32|bfloat16|float16|q8_0|q4_1|...] [--num-steps 10]
        [--prompts FILE] [--reference FILE] [--kv-cache-dtype fp8]

`--prompts` is a JSON list (strings, or {"prompt": ..., "images": [file, ...]} for a
vision-language model) or a text file with one prompt per line.

`--framework torch` runs Hugging Face transformers on the same weights as the
independent reference. With `--reference`, the framework is teacher-forced along the
reference's tokens so both follow the same path. Output format: see
max.verification.logits_file.
"""

from __future__ import annotations

import argparse
import sys
import time

from max.errors import MaxError
from max.pipelines.lib.config import KV_CACHE_DTYPES, QUANTIZATION_METHODS, WEIGHT_ONLY_SCHEMES
from max.pipelines.lib.hub.hf_overrides import parse_hf_overrides
from max.verification.cli import UsageErrorParser, run_tool
from max.verification.frameworks import FrameworkSettings, run_framework
from max.verification.logits_file import read_logits, write_logits
from max.verification.named_pipelines import NAMED_PIPELINES, resolve_pipeline_path
from max.verification.prompts import DEFAULT_PROMPTS, read_prompts


def _hf_overrides(text: str) -> dict | None:
    """`--hf-overrides`'s JSON object; a usage error for anything else."""
    try:
        return parse_hf_overrides(text)
    except MaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = UsageErrorParser(prog="generate_llm_logits", description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["max", "torch"], required=True)
    parser.add_argument(
        "--pipeline",
        required=True,
        help=f"a named pipeline ({', '.join(p.name for p in NAMED_PIPELINES)}) or a model path",
    )
    parser.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    parser.add_argument(
        "--encoding",
        default="float32",
        choices=["float32", "bfloat16", "float16", *WEIGHT_ONLY_SCHEMES],
        help="a quantized encoding (q8_0, q4_1, ...) keeps ours' weights quantized on the CPU; "
        "the torch reference then runs bfloat16",
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("--reference", help="teacher-force along this logits file's tokens")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument(
        "--prompts",
        help="JSON list (entries: a string, or {'prompt': str, 'images': [file, ...]}) or one prompt per line "
        "(default: a fixed varied set; with images for a vision-language pipeline)",
    )
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--custom-architectures", action="append", default=[])
    parser.add_argument(
        "--kernels", choices=["auto", "torch"], default="auto", help="'torch': torch reference ops, even on a GPU"
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="ranks of ours (GPUs, or CPU processes)")
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATION_METHODS,
        help="ours only: fp8 weights and per-token activations (the reference stays in --encoding)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=list(KV_CACHE_DTYPES),
        default="auto",
        help="ours only: the KV cache's storage, e.g. fp8 (e4m3, per-tensor scales 1.0)",
    )
    parser.add_argument("--lora", metavar="PATH", help="a LoRA adapter (PEFT folder or Hub repo id): torch applies it with PEFT")
    parser.add_argument(
        "--hf-overrides", metavar="JSON", type=_hf_overrides,
        help="a JSON object merged into the Hugging Face config of both frameworks (as serve's flag)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_steps < 1:
        parser.error("--num-steps must be at least 1")
    model_path, pipeline = resolve_pipeline_path(args.pipeline)
    settings = FrameworkSettings(
        model_path=model_path,
        device=args.device,
        encoding=args.encoding,
        num_steps=args.num_steps,
        max_length=args.max_length or (pipeline.max_length if pipeline else None),
        trust_remote_code=args.trust_remote_code,
        custom_architectures=args.custom_architectures,
        kernels=args.kernels,
        tensor_parallel_size=args.tensor_parallel_size,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        reference_model_path=pipeline.reference_path() if pipeline else None,
        lora=args.lora,
        hf_overrides=args.hf_overrides,
    )
    prompts = read_prompts(args.prompts) if args.prompts else (pipeline.prompts() if pipeline else DEFAULT_PROMPTS)
    reference = read_logits(args.reference) if args.reference else None
    start = time.perf_counter()
    results = run_framework(args.framework, settings, prompts, reference)
    write_logits(args.output, results)
    print(
        f"wrote {args.output}: {len(results)} prompts x {args.num_steps} steps from {args.framework} "
        f"({args.encoding}, {args.device}) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
