"""The kernel micro-benchmark: each kernel at real shapes, Triton beside torch, against the copy rate.

Every kernel of `max_kernels` at real shapes, its Triton version and its torch reference
side by side, against the card's copy bandwidth:

    ./bazelw run //max/python/max/benchmark/kernels:bench -- [--filter attention] [--result-file out.json]
    PYTHONPATH=max/python:max/kernels/python python3 -m max.benchmark.kernels.bench   # on a GPU machine

Prints one Markdown row per kernel and shape: median times (CUDA events), achieved
bandwidth (the fewest bytes the op must move over its time), and that bandwidth as a share
of the device-to-device copy rate measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import torch

from max.benchmark.kernels.bench_harness import BenchResult, copy_bandwidth_gbps, run_case
from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_result_file_arg

SUITES = ("attention_bench", "fused_ops_bench", "sampling_moe_bench", "mxfp4_moe_bench")


def _cases(name_filter: str | None):
    import importlib

    for suite in SUITES:
        for case in importlib.import_module(f"max.benchmark.kernels.{suite}").bench_cases():
            if name_filter is None or name_filter in case.kernel:
                yield case


def _row(r: BenchResult, copy_gbps: float) -> str:
    ref = f"{r.reference_ms * 1000:.1f}" if r.reference_ms is not None else "-"
    speedup = f"{r.reference_ms / r.triton_ms:.1f}x" if r.reference_ms is not None else "-"
    return (
        f"| {r.kernel} | {r.shape} | {r.triton_ms * 1000:.1f} | {ref} | {speedup} | "
        f"{r.triton_gbps:.0f} | {100 * r.triton_gbps / copy_gbps:.0f} % |"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the suite and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", help="only kernels whose name contains this")
    add_result_file_arg(parser, "also write the results here as JSON", json_alias=True)
    args = parser.parse_args(argv)
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("the kernel benchmark needs a CUDA GPU", file=sys.stderr)
        return 1
    copy = copy_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s (read + write)")
    print()
    print("| kernel | shape | Triton µs | torch µs | speed-up | Triton GB/s | of copy rate |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for case in _cases(args.filter):
        try:
            result = run_case(case)
        except Exception as e:  # one failing case must not hide the others' numbers
            print(f"| {case.kernel} | {case.shape} | failed: {type(e).__name__}: {e} | | | | |")
            continue
        results.append(result)
        print(_row(result, copy), flush=True)
        torch.cuda.empty_cache()
    if args.result_file:
        with open(args.result_file, "w") as f:
            json.dump({"copy_gbps": copy, "results": [asdict(r) for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
