"""Finds the first decoder layer and sub-module where this framework and the PyTorch
reference diverge, on one prompt.

    compare_layers --pipeline NAME|PATH [--prompt TEXT] [--device cpu] [--encoding float32]
                   [--threshold 1e-3]

Use it when `verify` says no: it prints every compared module's max absolute and relative
error, in execution order, and names the first one above the threshold. Exit status 0 when
all agree, 2 when a divergence is found, 1 on usage errors.
"""

from __future__ import annotations

import sys

from max.verification.cli import UsageErrorParser, run_tool
from max.verification.frameworks import FrameworkSettings, tokenize_prompts
from max.verification.layer_comparison import compare_layers
from max.verification.named_pipelines import resolve_pipeline_path
from max.verification.prompts import VerificationPrompt


def main(argv: list[str] | None = None) -> int:
    parser = UsageErrorParser(prog="compare_layers", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="a named pipeline or a model path")
    parser.add_argument("--prompt", default="The capital of France is Paris, and the capital of Italy is")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoding", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threshold", type=float, default=1e-3, help="relative error that counts as divergence")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--custom-architectures", action="append", default=[])
    args = parser.parse_args(argv)
    model_path, pipeline = resolve_pipeline_path(args.pipeline)
    settings = FrameworkSettings(
        model_path=model_path,
        device=args.device,
        encoding=args.encoding,
        max_length=pipeline.max_length if pipeline else None,
        trust_remote_code=args.trust_remote_code,
        custom_architectures=args.custom_architectures,
    )
    (encoded,) = tokenize_prompts(settings, [VerificationPrompt(args.prompt)])
    ids = encoded.ids
    report = compare_layers(settings, ids, args.threshold)
    print(report.format())
    return 0 if report.first_divergence is None else 2


if __name__ == "__main__":
    sys.exit(run_tool(main))
