"""`pipelines bring-up`: the contributor workflow of a new architecture in one command.

    pipelines bring-up --model-path PATH_OR_REPO [--custom-architectures DIR] [--devices cpu]
        [--encodings float32,bfloat16] [--tasks NAME,...] [--limit N] [--output DIR]
        [--only STEP[,STEP]] [--skip STEP[,STEP]]

Steps: 1 `resolve` (architecture and config), 2 `verify` (logits against transformers per
encoding; the first diverging layer on failure), 3 `eval` (lm-eval through `serve` against
lm-eval's `hf` reference), 4 `bench` (throughput beside transformers), 5 the report
(`report.md`, `report.json`, and a summary on stdout). Every step after the first needs the
first; a failed verify does not stop eval or bench. Exit status 0 when no step failed, 2
when one did, 1 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from max.entrypoints.bring_up_args import STEPS
from max.entrypoints.bring_up_step import (
    FAILED,
    SKIPPED,
    TITLES,
    BringUpOptions,
    ModelFacts,
    StepResult,
)
from max.errors import MaxError


def selected_steps(only: list[str] | None, skip: list[str] | None) -> list[str]:
    """The steps to run, in order. `resolve` runs whenever another step does (they all read
    the model it finds), so skipping it while keeping another is a usage error."""
    chosen = [s for s in STEPS if (not only or s in only) and s not in (skip or [])]
    if not chosen:
        raise MaxError("--only/--skip leave no step to run")
    if "resolve" not in chosen:
        if skip and "resolve" in skip:
            raise MaxError(f"--skip resolve: {', '.join(chosen)} need(s) the model that resolve finds")
        chosen.insert(0, "resolve")
    return chosen


def options_from_args(args: argparse.Namespace) -> BringUpOptions:
    """The parsed flags as options (defaults settled, encodings checked)."""
    from max.pipelines.lib import DEFAULT_MODEL, ENCODINGS

    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown or not encodings:
        raise MaxError(f"--encodings: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(ENCODINGS)})")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    return BringUpOptions(
        model_path=args.model_path or DEFAULT_MODEL.alias,
        custom_architectures=list(args.custom_architectures),
        devices=args.devices,
        encodings=encodings,
        tasks=tasks,
        limit=args.limit,
        output=Path(args.output),
        steps=selected_steps(args.only, args.skip),
        num_steps=args.num_steps,
        bench_new_tokens=args.bench_new_tokens,
        bench_batch=args.bench_batch,
        trust_remote_code=args.trust_remote_code,
        only=list(args.only or []),
        skip=list(args.skip or []),
    )


def _guarded(name: str, run: Callable[[], StepResult]) -> StepResult:
    """Runs a step; an exception fails that step only (it is recorded, the others go on)."""
    start = time.perf_counter()
    try:
        return run()
    except Exception as e:
        if not isinstance(e, MaxError):
            traceback.print_exc()
        message = f"{type(e).__name__}: {e}" if not isinstance(e, MaxError) else str(e)
        return StepResult(
            name, TITLES[name], FAILED, message.splitlines()[0][:300], time.perf_counter() - start,
            markdown=f"```\n{message}\n```", details={"error": message},
        )  # fmt: skip


def _step_runner(name: str) -> Callable[[BringUpOptions, ModelFacts], StepResult]:
    """The function of a step after resolve (imported when it runs: each pulls in its tools)."""
    if name == "verify":
        from max.entrypoints.bring_up_verify import run_verify

        return run_verify
    if name == "eval":
        from max.entrypoints.bring_up_eval import run_eval

        return run_eval
    from max.entrypoints.bring_up_bench import run_bench

    return run_bench


def _run_step(name: str, opts: BringUpOptions, facts: ModelFacts) -> StepResult:
    return _step_runner(name)(opts, facts)


def run_steps(opts: BringUpOptions) -> tuple[list[StepResult], ModelFacts | None]:
    """Runs the chosen steps in order; a step whose prerequisite failed is skipped."""
    from max.entrypoints.bring_up_resolve import run_resolve

    results: list[StepResult] = []
    found: list[ModelFacts | None] = [None]

    def resolve() -> StepResult:
        result, found[0] = run_resolve(opts)
        return result

    for name in STEPS:
        if name not in opts.steps:
            results.append(StepResult(name, TITLES[name], SKIPPED, "not selected (--only/--skip)"))
            continue
        print(f"== {name}: {TITLES[name]}", file=sys.stderr, flush=True)
        facts = found[0]
        if name == "resolve":
            results.append(_guarded(name, resolve))
        elif facts is None:
            results.append(StepResult(name, TITLES[name], SKIPPED, "needs resolve, which did not pass"))
        else:
            results.append(_guarded(name, functools.partial(_run_step, name, opts, facts)))
    return results, found[0]


def bring_up(opts: BringUpOptions) -> int:
    """Runs the steps, writes the report, prints the summary; returns the exit status."""
    from max.entrypoints.bring_up_report import build_report, summary_screen, write_report

    start = time.perf_counter()
    steps, facts = run_steps(opts)
    report = build_report(opts, facts, steps, time.perf_counter() - start)
    paths = write_report(opts.output, report, steps)
    print(summary_screen(report, steps, paths))
    return 0 if report["passed"] else 2


def cmd_bring_up(args: argparse.Namespace) -> int:
    """The `bring-up` subcommand."""
    return bring_up(options_from_args(args))
