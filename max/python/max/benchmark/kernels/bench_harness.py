"""Timing helpers of the kernel benchmarks (`//max/python/max/benchmark/kernels:bench` and the
per-kernel benches beside it).

A `BenchCase` names one kernel at one shape, with a Triton and a reference callable and
the fewest bytes the op must move through device memory (each input read once, each
output written once). `run_case` times both with CUDA events (median of many runs) and
reports achieved bandwidth, which `bench.py` compares with the card's measured
device-to-device copy rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from max_kernels.cuda_graph import capture_graph


@dataclass
class BenchCase:
    """One kernel at one shape."""

    kernel: str
    shape: str
    triton_fn: Callable[[], object]
    reference_fn: Callable[[], object] | None
    bytes_moved: int


@dataclass
class BenchResult:
    """Median times (ms) and achieved bandwidths (GB/s) of a case."""

    kernel: str
    shape: str
    triton_ms: float
    reference_ms: float | None
    triton_gbps: float
    reference_gbps: float | None


def time_ms(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median time of `fn` in milliseconds, measured with CUDA events (triton's do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def run_case(case: BenchCase) -> BenchResult:
    """Times a case's Triton kernel and, if given, its reference."""
    t = time_ms(case.triton_fn)
    r = time_ms(case.reference_fn) if case.reference_fn is not None else None
    gbps = lambda ms: case.bytes_moved / (ms * 1e-3) / 1e9  # noqa: E731
    return BenchResult(case.kernel, case.shape, t, r, gbps(t), gbps(r) if r is not None else None)


def graph_time_us(fn: Callable[[int], object], copies: int, reps: int = 20) -> float:
    """Microseconds per call of fn(i) for i in range(copies), replayed from one CUDA graph.
    Calls on different weights keep them out of L2."""
    graph, _ = capture_graph(lambda: [fn(i) for i in range(copies)])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (reps * copies)


def copy_bandwidth_gbps(num_bytes: int = 2 * 2**30) -> float:
    """The card's device-to-device copy rate, counting bytes read plus bytes written."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * num_bytes / (ms * 1e-3) / 1e9


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the given tensors together."""
    return sum(t.numel() * t.element_size() for t in tensors)


def bandwidth_row(label: str, us: float, moved: int, copy_gbps: float) -> str:
    """One Markdown row: label, µs per call, MB moved, GB/s and the share of the copy rate."""
    gbps = moved / (us * 1e-6) / 1e9
    return f"| {label} | {us:.1f} | {moved / 1e6:.1f} | {gbps:.0f} | {100 * gbps / copy_gbps:.0f} % |"
