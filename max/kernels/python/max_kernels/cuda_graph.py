"""Capturing a call of the kernels in a CUDA graph, as the GPU tests and the benchmarks do.

The kernels are safe to capture (no host synchronisation, fixed grids); a capture needs
them compiled and the caching allocator warmed first, which one run on a side stream does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def capture_graph(run: Callable[[], T]) -> tuple[torch.cuda.CUDAGraph, T]:
    """Runs `run` once on a side stream (compiling its kernels and warming the allocator
    outside the capture), then captures it in a CUDA graph; returns the graph and what the
    captured call returned (its static outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = run()
    return graph, result
