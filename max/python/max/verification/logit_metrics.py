"""Comparing two logits files: tolerance, cosine distance and KL divergence per step.

Conventions of MAX's `verify`: prompts are matched by text; `tol` is an elementwise
allclose; `cos` is 1 - cosine similarity; `kl` is KL(reference || target) of the softmaxed
logits, smoothed by 1e-10. A metric fails when any step exceeds its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from max.errors import MaxError
from max.verification.logits_file import PromptLogits

METRICS = ("tol", "cos", "kl")
_SMOOTH = 1e-10


@dataclass
class Criteria:
    """Which metrics to check, and their limits."""

    metrics: tuple[str, ...] = ("cos", "kl", "tol")
    rtol: float = 1e-2
    atol: float = 1e-5
    cos_threshold: float = 1e-3
    kl_threshold: float = 1e-2


@dataclass
class PromptReport:
    """Discrepancies of one prompt over its steps."""

    prompt: str
    kl: list[float]
    cos: list[float]
    mae: float
    rmse: float
    max_abs: float
    tol_failures: int
    argmax_mismatches: int


@dataclass
class Difference:
    """One large elementwise difference."""

    prompt: str
    step: int
    token: int
    target: float
    reference: float

    @property
    def abs_diff(self) -> float:
        return abs(self.target - self.reference)


@dataclass
class Comparison:
    """The whole comparison, with per-metric verdicts."""

    prompts: list[PromptReport]
    worst: list[Difference]
    criteria: Criteria
    failures: list[str] = field(default_factory=list)

    @property
    def max_kl(self) -> float:
        return max((max(p.kl) for p in self.prompts if p.kl), default=0.0)

    @property
    def max_cos(self) -> float:
        return max((max(p.cos) for p in self.prompts if p.cos), default=0.0)

    @property
    def passed(self) -> bool:
        return not self.failures


def _kl(reference: np.ndarray, target: np.ndarray) -> float:
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max())
        return e / e.sum()

    p = softmax(reference.astype(np.float64)) + _SMOOTH
    q = softmax(target.astype(np.float64)) + _SMOOTH
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _cos_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(1.0 - (a @ b) / denom) if denom else 0.0


def compare(target: list[PromptLogits], reference: list[PromptLogits], criteria: Criteria, worst: int = 5) -> Comparison:
    """Compares target logits against reference logits prompt by prompt, step by step."""
    for m in criteria.metrics:
        if m not in METRICS:
            raise MaxError(f"unknown metric {m!r} (choose from {', '.join(METRICS)})")
    ref_by_prompt = {r.prompt: r for r in reference}
    if {r.prompt for r in target} != set(ref_by_prompt):
        only_t = sorted({r.prompt for r in target} - set(ref_by_prompt))
        only_r = sorted(set(ref_by_prompt) - {r.prompt for r in target})
        raise MaxError(
            "the two files hold different prompts"
            + (f"; only in the first: {only_t[0][:60]!r}" if only_t else "")
            + (f"; only in the second: {only_r[0][:60]!r}" if only_r else "")
        )
    reports: list[PromptReport] = []
    differences: list[Difference] = []
    tol_failed = False
    for t in target:
        r = ref_by_prompt[t.prompt]
        if len(t.steps) != len(r.steps):
            raise MaxError(f"prompt {t.prompt[:60]!r} has {len(t.steps)} steps in one file and {len(r.steps)} in the other")
        kls, coss, abs_sum, sq_sum, count, max_abs, tol_fail, mismatches = [], [], 0.0, 0.0, 0, 0.0, 0, 0
        for step, (ts, rs) in enumerate(zip(t.steps, r.steps)):
            if ts.logits.shape != rs.logits.shape:
                raise MaxError(
                    f"prompt {t.prompt[:60]!r} step {step}: vocabularies differ "
                    f"({ts.logits.shape[0]} vs {rs.logits.shape[0]})"
                )
            diff = np.abs(ts.logits.astype(np.float64) - rs.logits.astype(np.float64))
            kls.append(_kl(rs.logits, ts.logits))
            coss.append(_cos_distance(ts.logits, rs.logits))
            abs_sum += float(diff.sum())
            sq_sum += float((diff**2).sum())
            count += diff.size
            max_abs = max(max_abs, float(diff.max()))
            if not np.allclose(ts.logits, rs.logits, rtol=criteria.rtol, atol=criteria.atol):
                tol_fail += 1
            if int(np.argmax(ts.logits)) != int(np.argmax(rs.logits)):
                mismatches += 1
            for index in np.argsort(diff)[-worst:]:
                differences.append(Difference(t.prompt, step, int(index), float(ts.logits[index]), float(rs.logits[index])))
        tol_failed |= tol_fail > 0
        reports.append(
            PromptReport(t.prompt, kls, coss, abs_sum / max(count, 1), (sq_sum / max(count, 1)) ** 0.5, max_abs, tol_fail, mismatches)
        )
    differences.sort(key=lambda d: d.abs_diff, reverse=True)
    result = Comparison(reports, differences[:worst], criteria)
    if "tol" in criteria.metrics and tol_failed:
        result.failures.append(f"tol: some steps are not allclose (rtol={criteria.rtol}, atol={criteria.atol})")
    if "cos" in criteria.metrics and result.max_cos > criteria.cos_threshold:
        result.failures.append(f"cos: max cosine distance {result.max_cos:.3e} > {criteria.cos_threshold:.3e}")
    if "kl" in criteria.metrics and result.max_kl > criteria.kl_threshold:
        result.failures.append(f"kl: max KL divergence {result.max_kl:.3e} > {criteria.kl_threshold:.3e}")
    return result


def format_report(result: Comparison) -> str:
    """The discrepancy report verify prints."""
    lines = ["| prompt | max KL | mean KL | max cos dist | MAE | RMSE | max abs diff | argmax mismatches |", "|---|---|---|---|---|---|---|---|"]
    for p in result.prompts:
        short = p.prompt.replace("\n", "\\n")[:40]
        lines.append(
            f"| {short} | {max(p.kl):.3e} | {np.mean(p.kl):.3e} | {max(p.cos):.3e} | {p.mae:.3e} | "
            f"{p.rmse:.3e} | {p.max_abs:.3e} | {p.argmax_mismatches}/{len(p.kl)} |"
        )
    lines.append("")
    lines.append("Largest differences (prompt, step, token: target vs reference):")
    for d in result.worst:
        short = d.prompt.replace("\n", "\\n")[:30]
        lines.append(f"  {short!r} step {d.step} token {d.token}: {d.target:.6f} vs {d.reference:.6f} (|diff| {d.abs_diff:.3e})")
    lines.append("")
    c = result.criteria
    lines.append(
        f"metrics: {', '.join(c.metrics)}; thresholds: KL {c.kl_threshold:g}, cos {c.cos_threshold:g}, "
        f"rtol {c.rtol:g}, atol {c.atol:g}; max KL {result.max_kl:.3e}, max cos dist {result.max_cos:.3e}"
    )
    if result.passed:
        lines.append("PASS")
    else:
        lines.extend(f"FAIL: {f}" for f in result.failures)
    return "\n".join(lines)
