"""Where a whole workload's time goes, step by step: which kind of step ran (a decode graph,
a prefill graph, an eager step with or without decoding requests in it), how many tokens,
how long the host spent in `LLMEngine.step()`, and how long the GPU took from the start of
one step's work to the start of the next (CUDA events; with asynchronous scheduling that
span is the step's GPU work plus any wait for the host).

`StepRecorder` wraps the engine's `ModelRunner.execute`; `summarize` groups the records by
kind. `KernelProfile` runs torch.profiler (CUDA activity only) over a region and reports
the GPU's busy time (the union of kernel intervals), the idle time, and the kernels that
took most of it, grouped into families (products, attention, norms, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

# Families of kernels by name fragment, first match wins.
_FAMILIES = (
    ("decode_attention", ("_decode_split_kernel", "_decode_combine_kernel")),
    ("prefill_attention", ("_prefill_kernel",)),
    ("rms_norm", ("rms_norm", "_rms")),
    ("rope_kv", ("rope", "_rotary")),
    ("activation", ("silu", "gelu", "_act")),
    ("sampling", ("sample", "argmax", "_greedy", "penalt")),
    ("gemm", ("gemm", "_gemv", "nvjet", "sm90_xmma", "cutlass", "cublas", "splitKreduce", "ampere_", "sm80_")),
    ("copy_fill", ("copy", "Memcpy", "Memset", "fill", "elementwise", "index", "gather", "scatter", "cat")),
)


def kernel_family(name: str) -> str:
    """The family a kernel name belongs to ('other' if none)."""
    for family, keys in _FAMILIES:
        if any(k in name for k in keys):
            return family
    return "other"


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


class StepRecorder:
    """Records every step the engine's runner executes (see the module docstring)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.runner = engine.runner
        self.records: list[StepRecord] = []
        self.host_ms: list[tuple[int, float]] = []  # (records launched so far, ms of step())
        self.starts: list[float] = []  # when each step() call began
        self._execute = self.runner.execute
        self._step = engine.step  # the bound method, so that engine.step may be replaced by ours
        self._cuda = engine.model.device.type == "cuda"
        self.runner.execute = self._wrapped
        self.jit = TritonJitWatch()
        if self._cuda:
            self.jit.install()

    def _wrapped(self, inputs):
        layout = inputs.layout
        replays, prefill_replays = self.runner.num_replays, self.runner.num_prefill_replays
        event = None
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        jit_before = self.jit.ms
        out = self._execute(inputs)
        b, nd = layout.num_requests, layout.num_decode
        if self.runner.num_replays != replays:
            kind = "graph_decode"
        elif self.runner.num_prefill_replays != prefill_replays:
            kind = "graph_prefill"
        elif nd == b:
            kind = "eager_decode"
        elif nd > 0:
            kind = "eager_mixed"
        else:
            kind = "eager_prefill"
        self.records.append(
            StepRecord(kind, b, nd, int(inputs.tokens.shape[0]), event, self.jit.ms - jit_before, time.time())
        )
        return out

    def step(self):
        """`engine.step()`, timed."""
        t0 = time.perf_counter()
        self.starts.append(t0)
        out = self._step()
        self.host_ms.append((len(self.records), 1000 * (time.perf_counter() - t0)))
        return out

    def close(self) -> None:
        self.runner.execute = self._execute
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


class KernelProfile:
    """torch.profiler over a region, CUDA kernels only: busy/idle and the top kernels."""

    def __init__(self, top: int = 20) -> None:
        self.top = top
        self._prof = None
        self._t0 = 0.0
        self.wall_ms = 0.0

    def __enter__(self) -> KernelProfile:
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CUDA])
        self._prof.__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize()
        self.wall_ms = 1000 * (time.perf_counter() - self._t0)
        self._prof.__exit__(*exc)

    def _kernels(self) -> list[tuple[str, float, float]]:
        """(name, start us, duration us) of every GPU kernel, copy and fill."""
        out = []
        try:
            for e in self._prof.profiler.kineto_results.events():
                if e.device_type() == torch.autograd.DeviceType.CUDA:
                    out.append((e.name(), e.start_ns() / 1000.0, e.duration_ns() / 1000.0))
            if out:
                return out
        except Exception:  # older or newer profiler internals
            out = []
        for e in self._prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                out.append((e.name, float(e.time_range.start), float(e.time_range.end - e.time_range.start)))
        return out

    def summary(self) -> dict:
        kernels = sorted(self._kernels(), key=lambda k: k[1])
        busy = 0.0
        end = None
        first = kernels[0][1] if kernels else 0.0
        last = first
        for _, start, dur in kernels:
            stop = start + dur
            if end is None or start >= end:
                busy += dur
                end = stop
            elif stop > end:
                busy += stop - end
                end = stop
            last = max(last, stop)
        by_name: dict[str, list[float]] = {}
        by_family: dict[str, float] = {}
        for name, _, dur in kernels:
            entry = by_name.setdefault(name[:90], [0, 0.0])
            entry[0] += 1
            entry[1] += dur
            fam = kernel_family(name)
            by_family[fam] = by_family.get(fam, 0.0) + dur
        top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[: self.top]
        span_ms = (last - first) / 1000.0
        return {
            "wall_ms": self.wall_ms,
            "gpu_span_ms": span_ms,
            "gpu_busy_ms": busy / 1000.0,
            "gpu_idle_ms": span_ms - busy / 1000.0,
            "kernels": len(kernels),
            "kernel_ms_total": sum(k[2] for k in kernels) / 1000.0,
            "families_ms": {k: round(v / 1000.0, 2) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"kernel": n, "count": int(c), "ms": round(us / 1000.0, 2)} for n, (c, us) in top],
        }


def format_stats(extra: dict) -> str:
    """A short text report of `step_stats` and `kernel_profile` results."""
    lines = []
    stats = extra.get("step_stats")
    if stats:
        jit = stats.get("triton_jit", {})
        lines.append(
            f"steps: {stats['steps']}, host ms in step(): {stats['host_ms_total']:.0f}, "
            f"GPU span ms: {stats['gpu_span_ms_total']:.0f}, Triton JIT misses: "
            f"{sum(n for n, _ in jit.get('kernels', {}).values())} ({jit.get('ms', 0.0):.0f} ms)"
        )
        lines.append(
            "| kind | steps | mean requests | mean tokens | host ms/step in step() | loop ms/step | GPU span ms/step | GPU span ms total |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for kind, k in sorted(stats["kinds"].items(), key=lambda kv: -kv[1]["gpu_span_ms"]):
            lines.append(
                f"| {kind} | {k['steps']} | {k['mean_requests']:.1f} | {k['mean_tokens']:.1f} | "
                f"{k['host_ms_per_step']:.2f} | {k.get('loop_ms_per_step', 0.0):.2f} | {k['gpu_span_ms_per_step']:.2f} | "
                f"{k['gpu_span_ms']:.0f} |"
            )
    prof = extra.get("kernel_profile")
    if prof:
        lines.append(
            f"GPU (profiled run): wall {prof['wall_ms']:.0f} ms, span {prof['gpu_span_ms']:.0f} ms, "
            f"busy {prof['gpu_busy_ms']:.0f} ms, idle {prof['gpu_idle_ms']:.0f} ms, {prof['kernels']} kernels"
        )
        lines.append("families (ms): " + ", ".join(f"{k} {v}" for k, v in prof["families_ms"].items()))
        for t in prof["top_kernels"]:
            lines.append(f"  {t['ms']:9.2f} ms {t['count']:7d}x {t['kernel']}")
    return "\n".join(lines)
