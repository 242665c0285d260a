"""Measurement aid (not part of the product): lines up what `tools/gpu_suite.sh serving-diag`
(or the `serving` stage with STEP_STATS=1 and `--save-detailed`) recorded on both sides of
`serve`, on one wall clock:

- from the engine's step record (`serve --step-stats-dir`): each run of steps of one kind,
  each request's arrival and each message that finished requests;
- from benchmark_serving's result file: each request's send and end.

For every burst of finishing requests (a "wave" end) it prints when the engine finished
them, when the clients saw them end and when the next requests reached the engine: the gap
between the first and the last is time the engine may sit idle.

    python3 tools/serve_timeline.py $OUT/steps/steps-PID.json $OUT/serving-diag-c256.json
"""

from __future__ import annotations

import argparse
import json
import sys


def _bursts(finished: list[list[float]], min_count: int, gap_s: float) -> list[tuple[float, float, int]]:
    """(first, last, requests) of each burst of finishing messages."""
    out: list[list[float]] = []
    for t, n in finished:
        if n < min_count:
            continue
        if out and t - out[-1][1] <= gap_s:
            out[-1][1] = t
            out[-1][2] += n
        else:
            out.append([t, t, n])
    return [(a, b, int(n)) for a, b, n in out]


def report(steps: dict, result: dict, min_count: int = 8) -> str:
    """The text: runs of steps, then each wave end."""
    requests = result.get("requests") or []
    sends = sorted(r["sent_at"] for r in requests if r.get("sent_at"))
    if not sends:
        raise SystemExit("the result file has no per-request send times (run with --save-detailed)")
    t0 = sends[0]
    ends = sorted(r["sent_at"] + r["latency"] for r in requests if r.get("success"))
    arrivals = sorted(steps.get("arrivals", []))
    lines = ["runs of steps (kind, steps, first/last requests, tokens, GPU span ms, host ms, loop ms, start s):"]
    for run in steps.get("timeline", []):
        start = f"{run[8] - t0:8.3f}" if len(run) > 8 else ""
        lines.append(f"  {run[0]:<14} {run[1]:5d} {run[2]:4d}/{run[3]:<4d} {run[4]:7d} {run[5]:9.1f} {run[6]:9.1f} {run[7]:9.1f} {start}")
    lines.append("wave ends (s from the first measured send):")
    for first, last, count in _bursts(steps.get("finished", []), min_count, gap_s=0.5):
        seen = [t for t in ends if first - 0.5 <= t <= last + 2.0]
        nxt = [t for t in arrivals if first - 0.5 <= t <= last + 2.0]
        line = f"  engine finished {count} at {first - t0:.3f}-{last - t0:.3f}"
        if seen:
            line += f"; clients saw {len(seen)} end at {seen[0] - t0:.3f}-{seen[-1] - t0:.3f}"
        if nxt:
            line += f"; {len(nxt)} requests reached the engine at {nxt[0] - t0:.3f}-{nxt[-1] - t0:.3f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", help="the engine's steps-PID.json")
    parser.add_argument("result", help="benchmark_serving's --result-file (with --save-detailed)")
    parser.add_argument("--min-count", type=int, default=8, help="finishing messages of fewer requests are not a wave end")
    args = parser.parse_args(argv)
    with open(args.steps) as f, open(args.result) as g:
        print(report(json.load(f), json.load(g), args.min_count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
