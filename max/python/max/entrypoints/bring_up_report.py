"""Step 5 of `bring-up`: `report.md` for a reviewer, `report.json` for tools, and the
one-screen summary printed at the end.

report.json (schema `max.bring-up/1`): `schema`, `date` (UTC, ISO 8601), `command`,
`model` ({`model_path`, `architecture`, `custom`}), `device` ({`devices`, `name`, `cpu`,
`cpu_cores`, `torch_threads`, `load_average`}), `versions` ({`python`, `torch`, `transformers`, `lm_eval`,
`triton`, `max_commit`}), `steps` (each: `name`, `title`, `status` passed|failed|skipped,
`summary`, `seconds`, `commands`, `details`), `passed` (no step failed), `seconds`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from max.entrypoints.bring_up_step import (
    FAILED,
    PASSED,
    SKIPPED,
    BringUpOptions,
    ModelFacts,
    P,
    StepResult,
    command,
)

SCHEMA = "max.bring-up/1"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    root = Path(__file__).resolve().parents[4]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    """The versions a reviewer needs to reproduce the numbers."""
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval"),
        "triton": _version("triton"),
        "max_commit": _commit(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(devices: str) -> dict[str, Any]:
    """What the steps ran on."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = _cpu_name()
    if devices.startswith("gpu") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    # Timings on a machine shared with other work mean little without its load.
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "devices": devices,
        "name": name,
        "cpu": _cpu_name(),
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
    }


def build_report(opts: BringUpOptions, facts: ModelFacts | None, steps: list[StepResult], seconds: float) -> dict[str, Any]:
    """The report as report.json stores it."""
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command(f"{P} bring-up", *opts.command_args()),
        "model": {
            "model_path": opts.model_path,
            "architecture": facts.architecture if facts else None,
            "custom": facts.custom if facts else None,
        },
        "device": device_info(opts.devices),
        "versions": versions(),
        "steps": [s.as_dict() for s in steps],
        "passed": not any(s.status == FAILED for s in steps),
        "seconds": round(seconds, 1),
    }


_MARK = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "skipped"}


def render_markdown(report: dict[str, Any], steps: list[StepResult]) -> str:
    """report.md: the verdicts first, then each step's tables and the commands that
    reproduce it with the separate tools."""
    dev, ver = report["device"], report["versions"]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines = [
        f"# Bring-up report: {report['model']['model_path']} ({report['model']['architecture'] or 'unresolved'})",
        "",
        f"**{verdict}** on {report['date']} in {report['seconds']:.0f} s.",
        "",
        f"- command: `{report['command']}`",
        f"- device: {dev['devices']}: {dev['name']} ({dev['cpu_cores']} CPU cores, {dev['torch_threads']} torch threads"
        + (f"; load average {', '.join(map(str, dev['load_average']))} over 1, 5, 15 min at the end)" if dev.get("load_average") else ")"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
        "",
        "| step | status | time | summary |",
        "|---|---|---|---|",
        *(f"| {s.name}: {s.title} | {_MARK[s.status]} | {s.seconds:.0f} s | {s.summary} |" for s in steps),
    ]
    for i, s in enumerate(steps, 1):
        lines += ["", f"## {i}. {s.title} ({s.name}): {_MARK[s.status]}", "", s.summary, ""]
        if s.markdown:
            lines += [s.markdown, ""]
        if s.commands:
            lines += ["The same with the separate tools:", "", "```sh", *s.commands, "```"]
    return "\n".join(lines).rstrip() + "\n"


def write_report(output: Path, report: dict[str, Any], steps: list[StepResult]) -> tuple[Path, Path]:
    """Writes report.md and report.json into `output`; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    md, js = output / "report.md", output / "report.json"
    md.write_text(render_markdown(report, steps))
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return md, js


def summary_screen(report: dict[str, Any], steps: list[StepResult], paths: tuple[Path, Path]) -> str:
    """The one-screen summary printed at the end."""
    width = max(len(s.name) for s in steps) if steps else 6
    lines = [f"bring-up of {report['model']['model_path']} ({report['model']['architecture'] or 'unresolved'}):"]
    for s in steps:
        summary = s.summary if len(s.summary) <= 150 else s.summary[:147] + "..."
        lines.append(f"  {s.name:<{width}}  {_MARK[s.status]:<7} {s.seconds:6.0f} s  {summary}")
    lines.append(f"{'PASS' if report['passed'] else 'FAIL'} in {report['seconds']:.0f} s; report: {paths[0]} and {paths[1]}")
    return "\n".join(lines)
