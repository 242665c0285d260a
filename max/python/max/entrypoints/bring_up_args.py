"""The flags of `pipelines bring-up` (light: the command itself lives in `bring_up.py`,
imported only when it runs, so the CLI starts without the verification and eval code)."""

from __future__ import annotations

import argparse

STEPS = ("resolve", "verify", "eval", "bench")
"""The steps that can be chosen with --only / --skip, in the order they run (the report is
always written)."""


def _step_list(text: str) -> list[str]:
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise argparse.ArgumentTypeError(f"steps are {', '.join(STEPS)} (got {text!r})")
    return steps


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def add_bring_up_args(parser: argparse.ArgumentParser) -> None:
    """Adds bring-up's flags to its subcommand parser."""
    parser.add_argument(
        "--model-path",
        "--model",
        default=None,
        help="checkpoint folder, GGUF file, Hub repo id, embedded model or named verification pipeline "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--custom-architectures", action="append", default=[], metavar="PATH[:MODULE]",
        help="architecture folder outside the tree (repeatable), e.g. one made by new-architecture",
    )  # fmt: skip
    parser.add_argument("--devices", default="cpu", help="cpu, gpu or gpu:N (every step)")
    parser.add_argument(
        "--encodings",
        default="float32,bfloat16",
        help="comma-separated encodings: the logit comparison runs each; eval and bench run the first "
        "(bench: every float one) (default: float32,bfloat16)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="lm-eval tasks, comma-separated (online: lm-eval downloads them); default: the local "
        "tasks the project ships (text_qa_local; chartqa_local too for a vision-language model)",
    )
    parser.add_argument("--limit", type=_positive, default=None, help="lm-eval: at most N documents per task")
    parser.add_argument("--output", default="bring-up", help="folder for report.md, report.json and logs")
    parser.add_argument(
        "--only", type=_step_list, action="extend", default=None, metavar="STEP[,STEP]",
        help=f"run only these steps ({', '.join(STEPS)}); resolve always runs first",
    )  # fmt: skip
    parser.add_argument(
        "--skip", type=_step_list, action="extend", default=None, metavar="STEP[,STEP]",
        help="skip these steps",
    )  # fmt: skip
    parser.add_argument("--num-steps", type=_positive, default=10, help="logit comparison: greedy steps per prompt")
    parser.add_argument("--bench-new-tokens", type=_positive, default=64, help="bench: tokens per request")
    parser.add_argument("--bench-batch", type=_positive, default=16, help="bench: requests of the batch workload")
    parser.add_argument("--trust-remote-code", action="store_true")
