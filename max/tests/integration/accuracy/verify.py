"""Compares two logits files (the framework under test first, the reference second).

    verify --eval-metric cos,kl,tol --relative-tolerance 1e-2 --absolute-tolerance 1e-5
           --cos-dist-threshold 0.001 --kl-div-threshold 0.01 max-logits.json torch-logits.json

Prints a discrepancy report. Exit status: 0 pass, 2 accuracy failure, 1 usage error.
"""

from __future__ import annotations

import sys

from max.verification.cli import UsageErrorParser, run_tool
from max.verification.logit_metrics import METRICS, Criteria, compare, format_report
from max.verification.logits_file import read_logits


def main(argv: list[str] | None = None) -> int:
    parser = UsageErrorParser(prog="verify", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="logits of the framework under test")
    parser.add_argument("reference", help="logits of the reference")
    parser.add_argument("--eval-metric", default="tol,cos,kl", help=f"comma-separated: {', '.join(METRICS)}")
    parser.add_argument("--relative-tolerance", type=float, default=1e-2)
    parser.add_argument("--absolute-tolerance", type=float, default=1e-5)
    parser.add_argument("--cos-dist-threshold", type=float, default=1e-3)
    parser.add_argument("--kl-div-threshold", type=float, default=1e-2)
    args = parser.parse_args(argv)
    metrics = tuple(m.strip() for m in args.eval_metric.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        parser.error(f"--eval-metric takes {', '.join(METRICS)} (got {args.eval_metric!r})")
    criteria = Criteria(
        metrics=metrics,
        rtol=args.relative_tolerance,
        atol=args.absolute_tolerance,
        cos_threshold=args.cos_dist_threshold,
        kl_threshold=args.kl_div_threshold,
    )
    result = compare(read_logits(args.target), read_logits(args.reference), criteria)
    print(format_report(result))
    return 0 if result.passed else 2


if __name__ == "__main__":
    sys.exit(run_tool(main))
