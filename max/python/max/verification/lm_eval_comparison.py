"""Comparing two lm-eval runs of the same tasks: the framework under test (through `serve`
and `local-chat-completions`) against the transformers reference (lm-eval's `hf` model).

Reads what `lm_eval --output_path DIR --log_samples` writes (`results_*.json` and
`samples_<task>_*.jsonl`), pairs the samples by `doc_id`, and states per task the scores
of both, the ratio of ours to the reference's (on the task's first metric), and how many
replies are identical. A task passes when the ratio is at least `min_ratio`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from max.errors import MaxError

DEFAULT_MIN_RATIO = 0.95


@dataclass
class TaskComparison:
    """One task's scores under both runs and their per-sample agreement."""

    task: str
    metric: str
    ours: float
    reference: float
    samples: int
    identical: int
    score_differs: list[int] = field(default_factory=list)  # doc ids whose metric differs
    min_ratio: float = DEFAULT_MIN_RATIO

    @property
    def ratio(self) -> float:
        """Ours over the reference's score; 1.0 when both are 0 (equal), inf when only
        the reference is 0."""
        if self.reference == 0:
            return 1.0 if self.ours == 0 else float("inf")
        return self.ours / self.reference

    @property
    def passed(self) -> bool:
        return self.ratio >= self.min_ratio

    def as_dict(self) -> dict:
        """The comparison as JSON-able values."""
        ratio = self.ratio
        return {
            "task": self.task,
            "metric": self.metric,
            "ours": self.ours,
            "reference": self.reference,
            "ratio": ratio if ratio != float("inf") else None,
            "samples": self.samples,
            "identical_replies": self.identical,
            "docs_scored_differently": self.score_differs,
            "min_ratio": self.min_ratio,
            "passed": self.passed,
        }


def _one_file(directory: Path, pattern: str) -> Path:
    files = sorted(Path(directory).rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not files:
        raise MaxError(f"lm-eval wrote no {pattern} under {directory}")
    return files[-1]


def read_scores(directory: Path) -> dict[str, dict[str, float]]:
    """Each task's metrics (`name,filter` keys, stderr left out) from the newest results file."""
    results = json.loads(_one_file(directory, "results_*.json").read_text())["results"]
    return {
        task: {k: float(v) for k, v in metrics.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
        for task, metrics in results.items()
    }


def read_samples(directory: Path, task: str) -> dict[int, dict]:
    """The logged samples of `task`, by doc id."""
    path = _one_file(directory, f"samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(s["doc_id"]): s for s in samples}


def _reply(sample: dict) -> str:
    resp = sample.get("filtered_resps") or sample.get("resps") or [""]
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return str(resp)


def compare_runs(ours_dir: Path, reference_dir: Path, tasks: list[str], min_ratio: float = DEFAULT_MIN_RATIO) -> list[TaskComparison]:
    """Compares the two output folders task by task (see the module docstring)."""
    ours_scores, ref_scores = read_scores(ours_dir), read_scores(reference_dir)
    comparisons = []
    for task in tasks:
        if task not in ours_scores or task not in ref_scores:
            raise MaxError(f"task {task} is missing from the lm-eval results ({ours_dir}, {reference_dir})")
        key = next(iter(ref_scores[task]), None)
        if key is None or key not in ours_scores[task]:
            raise MaxError(f"task {task} has no metric common to both runs")
        metric = key.split(",")[0]
        ours, ref = read_samples(ours_dir, task), read_samples(reference_dir, task)
        if set(ours) != set(ref):
            raise MaxError(f"task {task}: the two runs scored different documents ({len(ours)} vs {len(ref)})")
        identical = sum(_reply(ours[d]) == _reply(ref[d]) for d in ours)
        differs = sorted(d for d in ours if ours[d].get(metric) != ref[d].get(metric))
        comparisons.append(
            TaskComparison(task, key, ours_scores[task][key], ref_scores[task][key], len(ours), identical, differs, min_ratio)
        )
    return comparisons


def printed_table(log: Path) -> str:
    """The results table lm-eval printed at the end of its output (its last Markdown table)."""
    tables, current = [], []
    for line in Path(log).read_text(errors="replace").splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return "\n".join(tables[-1]) if tables else ""


def format_table(comparisons: list[TaskComparison]) -> str:
    """A Markdown table of the comparisons."""
    lines = [
        "| task | metric | ours | transformers | ratio | identical replies | docs scored differently | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        ratio = "inf" if c.ratio == float("inf") else f"{c.ratio:.1%}"
        differs = ", ".join(str(d) for d in c.score_differs[:10]) + (" ..." if len(c.score_differs) > 10 else "")
        verdict = "PASS" if c.passed else f"FAIL (< {c.min_ratio:.0%})"
        lines.append(
            f"| {c.task} | {c.metric} | {c.ours:.4f} | {c.reference:.4f} | {ratio} | {c.identical}/{c.samples} | "
            f"{differs or '-'} | {verdict} |"
        )
    return "\n".join(lines)
