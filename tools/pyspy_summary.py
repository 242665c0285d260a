"""Measurement aid (not part of the product): what a `py-spy record --format raw --threads
--idle` file says, per thread: samples, the functions holding most of them (inclusive: on
the stack anywhere) and the lines they were sampled at (leaves: where the time is spent,
waits included). `tools/gpu_suite.sh serving-diag` writes such files for the `serve`
processes and the benchmark client.

    python3 tools/pyspy_summary.py $OUT/pyspy-PID.txt [--top 30] [--thread MainThread]
"""

from __future__ import annotations

import argparse
import collections
import sys


def summarize(path: str, top: int, thread_filter: str | None) -> str:
    """The report's text."""
    per_thread: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in open(path, errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue  # a frame name with spaces or newlines broke the line: skip it
        frames = stack.split(";")
        thread, n = frames[0], int(count)
        if thread_filter and thread_filter not in thread:
            continue
        per_thread[thread] += n
        leaves[thread][frames[-1]] += n
        for name in {f.split(" (")[0] for f in frames[1:]}:
            inclusive[thread][name] += n
    out = []
    for thread, total in per_thread.most_common():
        out.append(f"== {thread}: {total} samples")
        out.append("  inclusive:")
        out += [f"  {n:7d} {100 * n / total:5.1f}%  {name}" for name, n in inclusive[thread].most_common(top)]
        out.append("  leaves:")
        out += [f"  {n:7d} {100 * n / total:5.1f}%  {name}" for name, n in leaves[thread].most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a py-spy raw (collapsed stacks) file")
    parser.add_argument("--top", type=int, default=25, help="rows per list")
    parser.add_argument("--thread", help="only threads whose name contains this")
    args = parser.parse_args(argv)
    print(summarize(args.path, args.top, args.thread))
    return 0


if __name__ == "__main__":
    sys.exit(main())
