"""The CPU's ways of holding and multiplying a linear layer's weights, measured on the
machine at hand.

Which way is fastest depends on the CPU more than on the model: with AVX512-BF16 torch's
weight-only int4/int8 kernels widen weights to bfloat16 in registers and win; with AVX2
alone bfloat16 is converted through float32 and fbgemm's int8 x int8 products may win.
Feature flags only hint at this, so `measure_paths` times each candidate at the model's
own layer shapes (batch 1, a decode step's worth of distinct weights, so that they stream
from memory as in a real step) and checks each candidate's product against float64 on a
seeded probe: a path whose kernel is wrong on this machine is never chosen.

Paths (`name`: weights / activations):
- `float32`: float32 / float32, the exact reference.
- `bfloat16`: bfloat16 / bfloat16.
- `int8`: int8 in groups of 32 / bfloat16 by our `max_kernels.cpu_int8` (rows in int16 per
  group), which also computes the int paths' LM head; where our kernels cannot be built,
  int8 per output channel (`_weight_int8pack_mm`) and a bfloat16 head
  (`quantized_linear.int4_kernel`, `int8_groups`).
- `int4`: int4 in groups of 32 / bfloat16 by our `max_kernels.cpu_int4` (rows in int16 per
  group); where it cannot be built, torch's `_weight_int4pack_mm_for_cpu`.
- `int8_dynamic`: int8 per output channel / int8 per call (fbgemm), edges in bfloat16.
  The fastest on AVX2, but its activations cannot hold LLMs' outlier channels: the probe
  (which has them) rejects it, so `auto` does not take it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from max.nn.int8_dynamic_linear import Int8DynamicLinear, int8_dynamic_supported
from max.nn.linear import Linear
from max.nn.quantized_linear import Int8GroupLinear, int8_groups, quantized_linear


def _float_linear(dtype: torch.dtype) -> Callable[[torch.Tensor], nn.Module]:
    def build(weight: torch.Tensor) -> nn.Module:
        # The decoder's own layer, so that its product (`max_kernels.linear`) is what is timed.
        layer = Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        return layer

    return build


def _quantized(scheme: str) -> Callable[[torch.Tensor], nn.Module]:
    # As the loader builds them (`quantized_linear`): int4 where its packing takes the
    # shape, else int8; int8 in groups where our kernels run, else per channel.
    return lambda weight: quantized_linear(weight, None, scheme, torch.bfloat16)


@dataclass(frozen=True)
class WeightPath:
    """One way to run a linear layer on the CPU."""

    name: str
    dtype: torch.dtype  # activations in and out
    # Largest relative error (Frobenius, against float64) allowed on the probe: about twice
    # what the format costs there (bfloat16 ~3e-3, int8 per channel ~9e-3, int4 in groups
    # of 32 ~8e-2), formats whose model-level error passed verification on SmolLM2 (KL
    # <= 0.02), so the format passes and a kernel that computes something else fails.
    # int8 activations cost ~1e-2 on plain Gaussian inputs but 8e-2 to 0.12 with the
    # probe's outlier channels, and failed on SmolLM2 (KL 1.5): they fail here too.
    tolerance: float
    build: Callable[[torch.Tensor], nn.Module]  # from a float32 weight [N, K]
    available: Callable[[], bool] = lambda: True


PATHS: dict[str, WeightPath] = {
    p.name: p
    for p in (
        WeightPath("float32", torch.float32, 1e-5, _float_linear(torch.float32)),
        WeightPath("bfloat16", torch.bfloat16, 1e-2, _float_linear(torch.bfloat16)),
        WeightPath("int8", torch.bfloat16, 2e-2, _quantized("int8")),
        WeightPath("int4", torch.bfloat16, 0.16, _quantized("int4")),
        WeightPath(
            "int8_dynamic", torch.bfloat16, 4e-2, lambda w: Int8DynamicLinear(w, None, torch.bfloat16),
            int8_dynamic_supported,
        ),  # fmt: skip
    )
}


def _head(path: WeightPath, shape: tuple[int, int]) -> nn.Module:
    """The LM head of `path` for a seeded weight [vocab, hidden]: the float dtype's, but
    int8 in groups for the weight-only quantized paths where the loader makes it so
    (`quantized_linear.quantized_head`)."""
    weight = torch.randn(shape) * 0.02
    if path.name in ("int8", "int4") and int8_groups(shape[1], torch.bfloat16):
        return Int8GroupLinear(weight, None, torch.bfloat16)
    return _float_linear(path.dtype)(weight)


@dataclass(frozen=True)
class PathMeasurement:
    """What `measure_paths` saw of one path on this machine."""

    name: str
    ms_per_token: float  # the decoder's linears and LM head, one token (batch 1), one thread
    error: float  # relative error of the probe product against float64
    tolerance: float

    @property
    def verified(self) -> bool:
        """The path computed the probe product within its tolerance."""
        return math.isfinite(self.error) and self.error <= self.tolerance

    def to_json(self) -> dict:
        """A JSON-ready dict (the on-disk cache's format)."""
        return {"name": self.name, "ms_per_token": self.ms_per_token, "error": self.error, "tolerance": self.tolerance}

    @classmethod
    def from_json(cls, d: dict) -> PathMeasurement:
        """The inverse of `to_json`."""
        return cls(str(d["name"]), float(d["ms_per_token"]), float(d["error"]), float(d["tolerance"]))


OUTLIER_SCALE = 50.0


def _probe(path: WeightPath, shape: tuple[int, int], seed: int = 0) -> tuple[nn.Module | None, float]:
    """(`path`'s layer for a seeded Gaussian weight of `shape` ([N, K]), the relative error
    of its product against float64 at batch 1 and 4: the kernels take other branches
    beyond one row) for Gaussian inputs with 1 % outlier channels. (None, inf) when the
    path fails to build or run."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=g) * 0.02
    x = torch.randn(4, shape[1], generator=g)
    # LLM activations have a few channels tens of times larger than the rest ("massive
    # activations"); quantizing activations per token must survive them. Without these,
    # fbgemm's int8 activations passed the probe yet gave SmolLM2 41 % top-1 agreement
    # with float32 (KL 1.5).
    outliers = torch.randperm(shape[1], generator=g)[: max(1, shape[1] // 100)]
    x[:, outliers] *= OUTLIER_SCALE
    try:
        layer = path.build(weight)
        with torch.inference_mode():
            out = torch.cat([layer(x[:1].to(path.dtype)), layer(x.to(path.dtype))]).double()
    except (RuntimeError, NotImplementedError):
        return None, math.inf
    ref = x.double() @ weight.double().t()
    ref = torch.cat([ref[:1], ref])
    error = float((out - ref).norm() / ref.norm())
    return layer, error if math.isfinite(error) else math.inf


def measure_paths(
    names: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    layers: int,
    head: tuple[int, int] | None = None,
    rounds: int = 5,
    max_copy_bytes: int = 128 << 20,
) -> list[PathMeasurement]:
    """Times each path in `names` at batch 1 over the linear `shapes` ([N, K] each) of one
    decoder layer repeated `layers` times, plus the LM head `head` ([vocab, hidden]) as the
    loader holds it for the path (`_head`), and checks each path
    on the probe (`_probe`); a path that fails it is reported, not timed.

    Each path gets distinct weights (copies of its probe layer) for as many layers as fit
    `max_copy_bytes` of float32 (a few times a server CPU's last-level cache), so that a
    pass streams most of them from memory as a real step does; the time is scaled to
    `layers`. (Weights that stay cached favour the float paths, whose bytes the cache saves
    most: a bias towards the exact side.) Each shape's best pass counts, on one thread
    (see there)."""
    per_layer = 4 * sum(n * k for n, k in shapes)
    copies = max(1, min(layers, max_copy_bytes // max(per_layer, 1)))
    paths = [PATHS[n] for n in names if PATHS[n].available()]
    errors: dict[str, float] = {}
    stacks: dict[str, list[tuple[list[nn.Module], torch.Tensor]]] = {}
    for p in paths:
        probes = {s: _probe(p, s) for s in dict.fromkeys(shapes)}
        errors[p.name] = max(e for _, e in probes.values())
        if not p.tolerance >= errors[p.name]:
            continue
        # Per shape: its layer copies, one input row.
        stacks[p.name] = [
            ([copy.deepcopy(probes[s][0]) for _ in range(copies)], torch.randn(1, s[1]).to(p.dtype)) for s in shapes
        ]
        if head is not None:
            stacks[p.name].append(([_head(p, head)], torch.randn(1, head[1]).to(p.dtype)))
    # Best time of each shape's pass over its copies: a finer grain than whole steps, so
    # that a shared machine's interruptions are filtered out by the minimum.
    best = {name: [math.inf] * len(stack) for name, stack in stacks.items()}
    # One thread: a multi-threaded op waits at its barrier for a thread that a busy
    # machine has descheduled, which made every OpenMP kernel (bfloat16, int8, int4) look
    # ten times slower than MKL's float32 in one of two runs at a load of 3 on 2 cores. A
    # single thread keeps the kernels' relative costs, which is all the choice needs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _time_rounds(stacks, best, len(shapes) + (head is not None), rounds)
    finally:
        torch.set_num_threads(threads)
    scale = layers / copies
    total = {name: sum(t[: len(shapes)]) * scale + sum(t[len(shapes) :]) for name, t in best.items()}
    return [PathMeasurement(p.name, 1e3 * total.get(p.name, math.inf), errors[p.name], p.tolerance) for p in paths]


def _time_rounds(
    stacks: dict[str, list[tuple[list[nn.Module], torch.Tensor]]], best: dict[str, list[float]], groups: int, rounds: int
) -> None:
    """Fills `best` (path -> best seconds per group of layer copies) over `rounds` rounds
    after a warm-up one."""
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up
            # Paths alternate shape by shape (a few ms each), so that a burst of other work
            # lands on all of them alike rather than on one path's whole pass.
            for i in range(groups):
                for name, stack in stacks.items():
                    group, x = stack[i]
                    start = time.perf_counter()
                    for layer in group:
                        layer(x)
                    best[name][i] = min(best[name][i], time.perf_counter() - start)


def fastest_verified(measurements: Sequence[PathMeasurement], margin: float = 0.05) -> PathMeasurement:
    """The fastest path whose probe passed. A path must beat the one listed before it by
    `margin` (5 %) to be preferred: callers list paths from most to least exact, so a tie
    within the noise of a shared machine goes to the more exact one. Raises ValueError when
    none passed."""
    verified = [m for m in measurements if m.verified and math.isfinite(m.ms_per_token)]
    if not verified:
        raise ValueError("no CPU weight path passed verification: " + ", ".join(f"{m.name} error {m.error:.2g}" for m in measurements))
    best = verified[0]
    for m in verified[1:]:
        if m.ms_per_token < best.ms_per_token * (1.0 - margin):
            best = m
    return best
