"""Where a benchmark's GPU time goes: `KernelProfile` runs torch.profiler (CUDA activity
only) over a region and reports the GPU's busy time (the union of kernel intervals), the
idle time, and the kernels that took most of it, grouped into families (products,
attention, norms, ...); `format_stats` prints it with the step record of
`max.pipelines.lib.engine.step_recorder`.
"""

from __future__ import annotations

import time

import torch

# Families of kernels by name fragment, first match wins.
_FAMILIES = (
    ("decode_attention", ("_decode_split_kernel", "_decode_combine_kernel")),
    ("prefill_attention", ("_prefill_kernel",)),
    ("rms_norm", ("rms_norm", "_rms")),
    ("rope_kv", ("rope", "_rotary")),
    ("activation", ("silu", "gelu", "_act")),
    ("sampling", ("sample", "argmax", "_greedy", "penalt")),
    ("lora", ("_shrink_kernel", "_expand_kernel")),
    ("gemm", ("gemm", "_gemv", "nvjet", "sm90_xmma", "cutlass", "cublas", "splitKreduce", "ampere_", "sm80_")),
    ("copy_fill", ("copy", "Memcpy", "Memset", "fill", "elementwise", "index", "gather", "scatter", "cat")),
)


def kernel_family(name: str) -> str:
    """The family a kernel name belongs to ('other' if none)."""
    for family, keys in _FAMILIES:
        if any(k in name for k in keys):
            return family
    return "other"


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
