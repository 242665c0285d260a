"""Where a workload's time goes, step by step: an engine observer that records each step.

`StepRecorder` is registered on an engine (`LLMEngine.add_observer`) and records which kind
of step ran (a decode graph, a prefill graph, an eager step with or without decoding
requests in it), how many tokens, how long the host spent in `LLMEngine.step()`, how long
the GPU took from the start of one step's work to the start of the next (CUDA events; with
asynchronous scheduling that span is the step's GPU work plus any wait for the host), the
Triton kernels compiled on the way, and when requests arrived and finished. `summarize`
groups the records by kind. `benchmark_throughput --step-stats` and
`serve --step-stats-dir DIR` use it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from max.pipelines.lib.engine.step_observer import StepObserver


@dataclass
class StepRecord:
    kind: str
    num_requests: int
    num_decode: int
    num_tokens: int
    event: Any  # torch.cuda.Event at the start of the step's GPU work (None on the CPU)
    jit_ms: float = 0.0  # host ms spent in Triton JIT misses (compiles or disk loads)
    launched_at: float = 0.0  # wall-clock time (time.time()) of the launch


class TritonJitWatch:
    """Counts the Triton kernel specializations a process compiles (or loads from the disk
    cache) while installed, through triton.knobs' JIT hooks where this Triton has them."""

    def __init__(self) -> None:
        self.misses: dict[str, list[float]] = {}  # kernel -> [count, ms]
        self.ms = 0.0
        self._start: float | None = None
        self._knobs = None
        self._saved = (None, None)
        try:
            from triton import knobs

            runtime = knobs.runtime
            if hasattr(runtime, "jit_cache_hook") and hasattr(runtime, "jit_post_compile_hook"):
                self._knobs = runtime
        except Exception:  # no triton, or one without knobs
            self._knobs = None

    def install(self) -> None:
        if self._knobs is None:
            return
        self._saved = (self._knobs.jit_cache_hook, self._knobs.jit_post_compile_hook)
        self._knobs.jit_cache_hook = self._miss
        self._knobs.jit_post_compile_hook = self._compiled

    def remove(self) -> None:
        if self._knobs is not None:
            self._knobs.jit_cache_hook, self._knobs.jit_post_compile_hook = self._saved

    def _miss(self, *args, **kwargs):
        self._start = time.perf_counter()
        return False  # compile as usual

    def _compiled(self, *args, fn=None, **kwargs):
        ms = 1000 * (time.perf_counter() - self._start) if self._start is not None else 0.0
        self._start = None
        self.ms += ms
        name = getattr(fn, "name", str(fn))
        entry = self.misses.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += ms
        return False


class StepRecorder(StepObserver):
    """Records every step the engine launches (see the module docstring); registered on
    the engine on construction, removed by `close`."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.records: list[StepRecord] = []
        self.host_ms: list[tuple[int, float]] = []  # (records launched so far, ms of step())
        self.starts: list[float] = []  # when each step() call began
        self.arrivals: list[float] = []  # wall-clock time of each request's arrival
        self.finished: list[tuple[float, int]] = []  # (wall-clock time, requests finished) per step()
        self._cuda = engine.model.device.type == "cuda"
        self._pending: tuple[str, Any, float] | None = None
        self.jit = TritonJitWatch()
        if self._cuda:
            self.jit.install()
        engine.add_observer(self)

    def request_added(self, request_id: str, num_prompt_tokens: int) -> None:
        self.arrivals.append(round(time.time(), 4))

    def step_started(self) -> None:
        self.starts.append(time.perf_counter())

    def step_launching(self, inputs, kind: str) -> None:
        event = None
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self._pending = (kind, event, self.jit.ms)

    def step_launched(self, inputs) -> None:
        kind, event, jit_before = self._pending
        layout = inputs.layout
        self.records.append(
            StepRecord(
                kind, layout.num_requests, layout.num_decode, int(inputs.tokens.shape[0]), event,
                self.jit.ms - jit_before, time.time(),
            )
        )  # fmt: skip

    def step_finished(self, outputs) -> None:
        self.host_ms.append((len(self.records), 1000 * (time.perf_counter() - self.starts[-1])))
        done = sum(1 for o in outputs if o.finished)
        if done:
            self.finished.append((round(time.time(), 4), done))

    def close(self) -> None:
        if self in self.engine.observers:
            self.engine.observers.remove(self)
        self.jit.remove()

    def summarize(self, end_event=None) -> dict:
        """Per kind: steps, tokens, decode rows, host ms in the step() calls that launched
        them, GPU span ms (start of the step's work to the start of the next)."""
        if self._cuda:
            torch.cuda.synchronize()
        spans: list[float | None] = [None] * len(self.records)
        if self._cuda:
            for i, r in enumerate(self.records):
                nxt = self.records[i + 1].event if i + 1 < len(self.records) else end_event
                if nxt is not None:
                    spans[i] = r.event.elapsed_time(nxt)
        # Host time of a step() call is charged to the step it launched (the last record
        # added during the call), if any.
        # The loop's time from a step() call to the next (what a caller does between steps
        # included) is charged the same way.
        host_by_record: dict[int, float] = {}
        loop_by_record: dict[int, float] = {}
        prev = 0
        for i, (count, ms) in enumerate(self.host_ms):
            loop = 1000 * (self.starts[i + 1] - self.starts[i]) if i + 1 < len(self.starts) else ms
            if count > prev:
                host_by_record[count - 1] = host_by_record.get(count - 1, 0.0) + ms
                loop_by_record[count - 1] = loop_by_record.get(count - 1, 0.0) + loop
            prev = count
        kinds: dict[str, dict[str, float]] = {}
        for i, r in enumerate(self.records):
            k = kinds.setdefault(
                r.kind,
                {
                    "steps": 0, "tokens": 0, "decode_rows": 0, "requests": 0, "host_ms": 0.0, "loop_ms": 0.0,
                    "gpu_span_ms": 0.0, "jit_ms": 0.0,
                },
            )
            k["steps"] += 1
            k["tokens"] += r.num_tokens
            k["decode_rows"] += r.num_decode
            k["requests"] += r.num_requests
            k["host_ms"] += host_by_record.get(i, 0.0)
            k["loop_ms"] += loop_by_record.get(i, 0.0)
            k["gpu_span_ms"] += spans[i] or 0.0
            k["jit_ms"] += r.jit_ms
        for k in kinds.values():
            n = max(1, k["steps"])
            k["mean_tokens"] = k["tokens"] / n
            k["mean_requests"] = k["requests"] / n
            k["host_ms_per_step"] = k["host_ms"] / n
            k["loop_ms_per_step"] = k["loop_ms"] / n
            k["gpu_span_ms_per_step"] = k["gpu_span_ms"] / n
        return {
            "steps": len(self.records),
            "host_ms_total": sum(ms for _, ms in self.host_ms),
            "gpu_span_ms_total": sum(s for s in spans if s is not None),
            "kinds": kinds,
            # Triton specializations compiled (or loaded from disk) during the run.
            "triton_jit": {"ms": self.jit.ms, "kernels": {k: [int(n), round(ms, 1)] for k, (n, ms) in self.jit.misses.items()}},
            # The step sequence, compressed: (kind, requests, tokens) runs.
            "timeline": _runs(self.records, spans, host_by_record, loop_by_record),
        }

    def write(self, directory: str) -> str:
        """Writes the summary (with arrivals and finishes) to DIRECTORY/steps-PID.json;
        returns the path."""
        path = os.path.join(directory, f"steps-{os.getpid()}.json")
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            json.dump({**self.summarize(), "arrivals": self.arrivals, "finished": self.finished}, f)
        return path


def _runs(
    records: list[StepRecord],
    spans: list[float | None],
    host_ms: dict[int, float],
    loop_ms: dict[int, float],
) -> list[list]:
    """Consecutive steps of one kind merged: [kind, steps, first requests, last requests,
    tokens, GPU span ms, host ms in step(), loop ms, wall-clock time of the first launch]."""
    out: list[list] = []
    for i, (r, s) in enumerate(zip(records, spans)):
        if not (out and out[-1][0] == r.kind):
            out.append([r.kind, 0, r.num_requests, r.num_requests, 0, 0.0, 0.0, 0.0, round(r.launched_at, 3)])
        run = out[-1]
        run[1] += 1
        run[3] = r.num_requests
        run[4] += r.num_tokens
        run[5] += s or 0.0
        run[6] += host_ms.get(i, 0.0)
        run[7] += loop_ms.get(i, 0.0)
    for run in out:
        run[5:8] = [round(v, 2) for v in run[5:8]]
    return out
