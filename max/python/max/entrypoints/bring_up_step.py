"""What the steps of `bring-up` share: the options, the model the first step resolved, each
step's result, and the progress line of the long steps."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

TITLES = {
    "resolve": "Architecture and config",
    "verify": "Logits against transformers",
    "eval": "lm-eval against transformers",
    "bench": "Throughput beside transformers",
}
"""Each step's title in the report, by step name."""

P = "./bazelw run //max/python/max/entrypoints:pipelines --"
TOOLS = "./bazelw run //max/tests/integration/tools"
ACCURACY = "./bazelw run //max/tests/integration/accuracy"
BENCH = "./bazelw run //max/python/max/benchmark"


@dataclass
class BringUpOptions:
    """The command line, parsed once."""

    model_path: str
    custom_architectures: list[str]
    devices: str
    encodings: list[str]
    tasks: list[str] | None
    limit: int | None
    output: Path
    steps: list[str]
    num_steps: int = 10
    bench_new_tokens: int = 64
    bench_batch: int = 16
    trust_remote_code: bool = False
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)

    def command_args(self) -> list[str]:
        """The flags of this run, spelled out (defaults included), for the report."""
        args = ["--model-path", self.model_path, *self.custom_flags(), "--devices", self.devices,
                "--encodings", ",".join(self.encodings)]  # fmt: skip
        if self.tasks:
            args += ["--tasks", ",".join(self.tasks)]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        args += ["--output", str(self.output)]
        if self.only:
            args += ["--only", ",".join(self.only)]
        if self.skip:
            args += ["--skip", ",".join(self.skip)]
        if self.num_steps != 10:
            args += ["--num-steps", str(self.num_steps)]
        args += ["--bench-new-tokens", str(self.bench_new_tokens), "--bench-batch", str(self.bench_batch)]
        return args

    def custom_flags(self) -> list[str]:
        """`--custom-architectures X` for each folder, as every tool takes it."""
        return [flag for path in self.custom_architectures for flag in ("--custom-architectures", path)]


@dataclass
class ModelFacts:
    """What the resolve step found, for the steps after it."""

    model_path: str  # what the tools take as --model-path / --pipeline
    directory: str
    gguf_file: str | None
    architecture: str
    folder: str  # the module that declares it
    custom: bool
    takes_images: bool
    encodings: list[str] = field(default_factory=list)  # those the folder accepts
    pipeline: Any = None  # the NamedPipeline of this model, if verification knows it
    max_length: int | None = None  # the named pipeline's, which verify and eval run with
    max_seq_len: int = 1024  # the longest sequence the model takes


@dataclass
class StepResult:
    """One step's outcome: a verdict, a one-line summary, Markdown for the report, the
    commands that reproduce it with the separate tools, and JSON-able details."""

    name: str
    title: str
    status: str = SKIPPED
    summary: str = ""
    seconds: float = 0.0
    markdown: str = ""
    commands: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The result as report.json stores it."""
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "seconds": round(self.seconds, 2),
            "commands": self.commands,
            "details": self.details,
        }


def command(*parts: str) -> str:
    """A shell command line, quoted where needed (the first part is taken as written)."""
    head, *rest = parts
    return " ".join([head, *(shlex.quote(p) for p in rest)])


class Progress:
    """A one-line progress bar on stderr for a step's parts: redrawn in place on a
    terminal, one line per update otherwise (logs, tests)."""

    def __init__(self, step: str, total: int, stream=None, width: int = 24) -> None:
        self.step, self.total, self.done, self.width = step, max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    def advance(self, label: str) -> None:
        """Marks the start of the next part, described by `label`."""
        self._draw(label, self.done)
        self.done += 1

    def note(self, label: str) -> None:
        """Redraws the bar with a new label, without advancing (progress inside a part)."""
        self._draw(label, self.done - 1)

    def finish(self, label: str = "done") -> None:
        """Draws the full bar and ends the line."""
        self.done = self.total
        self._draw(label, self.done)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, label: str, done: int) -> None:
        done = min(max(done, 0), self.total)
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{self.step:<7}] [{bar}] {done}/{self.total} {elapsed:6.0f} s  {label}"
        if self._tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
