"""What `--quantization-encoding auto` means on a CPU: the fastest way to hold the weights
that passes verification on the machine it runs on, chosen by measurement.

Feature flags guessed wrong: without AVX512-BF16, `auto` used to run float32 (0.65x
transformers bfloat16 on a 2-core AVX2 EPYC, 0.36x under an AVX2 emulation) although
bfloat16 and the int8/int4 paths were 2.5x faster there. Now the candidates the checkpoint allows (`candidate_paths`; flags only
drop paths that cannot be fast, e.g. fbgemm's int8 without AVX2) are timed at the model's
own layer shapes and checked against float64 (`max.nn.cpu_weight_paths`), and the fastest
that passes is taken. The result is cached for the process and on disk
(`~/.cache/max/cpu_weight_paths.json`, or `$MAX_CPU_WEIGHT_PATH_CACHE`; `off` disables it),
keyed by CPU model, torch version, ISA and shapes, so later starts cost nothing.

A chosen path maps back to settings the engine processes re-resolve identically:
- `float32` / `bfloat16`: that encoding (a quantized GGUF's weights are decoded);
- `int4`: the file's 4-bit encoding (its codes kept, int4 in groups of 32);
- `int8`: the file's encoding if it has 5 to 8 bits, else `q8_0` (int8 weight-only, per
  channel; in groups of 32 where our CPU kernels run);
- `int8_dynamic`: `bfloat16` with `--quantization int8_dynamic` (int8 weights and
  activations through fbgemm, the rest of the network in bfloat16). Measured, but its
  probe fails on every machine (LLM activations' outlier channels): see
  max.nn.int8_dynamic_linear.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from max.nn.cpu_weight_paths import PathMeasurement, fastest_verified, measure_paths
from max.pipelines.lib.plan import choose_cpu_encoding

logger = logging.getLogger("max.pipelines")

# Most exact first: a later path must be measurably faster to be preferred.
PATH_ORDER = ("float32", "bfloat16", "int8", "int8_dynamic", "int4")
INT4_ENCODINGS = ("q4_0", "q4_1", "q4_k")
INT8_ENCODINGS = ("q8_0", "q6_k", "q5_0", "q5_k")
INT8_DYNAMIC = "int8_dynamic"  # the --quantization method the int8_dynamic path sets
# Part of the cache key: bump it when the measurement or the probes change, so figures
# taken the old way are not reused.
MEASUREMENT_VERSION = "6"

Measure = Callable[[Sequence[str], Sequence[tuple[int, int]], int, tuple[int, int] | None], list[PathMeasurement]]


@dataclass(frozen=True)
class ModelShapes:
    """The linear layers a decode step multiplies by: one decoder layer's [N, K] shapes,
    how many layers, and the LM head's."""

    layers: tuple[tuple[int, int], ...]
    num_layers: int
    head: tuple[int, int]

    def key(self) -> str:
        """A cache key part."""
        return f"{list(self.layers)}x{self.num_layers}+{list(self.head)}"


@dataclass(frozen=True)
class CpuChoice:
    """What `auto` stands for on this CPU, and why."""

    path: str
    encoding: str
    quantization: str | None
    measurements: tuple[PathMeasurement, ...]
    how: str  # "measured", "cached" or "flags" (no shapes to measure at)

    def describe(self) -> str:
        """One log line: the figures and the choice."""
        figures = ", ".join(
            f"{m.name} {m.ms_per_token:.1f} ms" if m.verified else f"{m.name} failed verification (error {m.error:.2g} > {m.tolerance:g})"
            for m in self.measurements
        )
        settings = self.encoding + (f" + --quantization {self.quantization}" if self.quantization else "")
        where = f"{_cpu_name()}, {torch.backends.cpu.get_cpu_capability()}"
        if not self.measurements:
            return f"auto on this CPU ({where}): {self.path} ({settings}; {self.how})"
        return f"auto on this CPU ({where}), decoder linears + LM head per token on one thread, {self.how}: {figures} -> {self.path} ({settings})"


def model_shapes(hf_config: Any) -> ModelShapes | None:
    """The decode step's linear shapes of a llama-like config (fused q/k/v and gate/up, as
    max.nn builds them), None when the config lacks the sizes."""
    try:
        hidden, inter = int(hf_config.hidden_size), int(hf_config.intermediate_size)
        heads, layers, vocab = int(hf_config.num_attention_heads), int(hf_config.num_hidden_layers), int(hf_config.vocab_size)
    except (AttributeError, TypeError):
        return None
    kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hidden // heads)
    qkv = (heads + 2 * kv_heads) * head_dim
    shapes = ((qkv, hidden), (hidden, heads * head_dim), (2 * inter, hidden), (hidden, inter))
    return ModelShapes(shapes, layers, (vocab, hidden))


def cpu_flags() -> set[str] | None:
    """The x86 feature flags of /proc/cpuinfo; None where there are none to read (not
    Linux, not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def candidate_paths(checkpoint_encoding: str | None, flags: set[str] | None, int8_dynamic_available: bool = True) -> list[str]:
    """The paths `auto` may take for a checkpoint whose weights are mostly in
    `checkpoint_encoding` (a GGUF type name such as `q4_1`; None or a float type for float
    weights), most exact first. A float checkpoint stays float (quantizing it is the user's
    call); a quantized GGUF may also keep int8 (and int4 for 4-bit files). The flags only
    drop paths that cannot be fast: without AVX2 every reduced-precision path is a scalar
    emulation, and fbgemm's int8 needs AVX2."""
    if checkpoint_encoding in INT4_ENCODINGS:
        paths = list(PATH_ORDER)
    elif checkpoint_encoding in INT8_ENCODINGS:
        paths = [p for p in PATH_ORDER if p != "int4"]
    else:
        paths = ["float32", "bfloat16"]
    if flags is not None and "avx2" not in flags:
        return ["float32"]
    if not int8_dynamic_available and INT8_DYNAMIC in paths:
        paths.remove(INT8_DYNAMIC)
    return paths


def settings_of(path: str, checkpoint_encoding: str | None) -> tuple[str, str | None]:
    """(--quantization-encoding, --quantization) that run `path` (see the module docstring)."""
    if path == "int4":
        return str(checkpoint_encoding), None
    if path == "int8":
        return (checkpoint_encoding if checkpoint_encoding in INT8_ENCODINGS else "q8_0"), None
    if path == INT8_DYNAMIC:
        return "bfloat16", INT8_DYNAMIC
    return path, None


def pick(measurements: Sequence[PathMeasurement]) -> str:
    """The path to take from the measurements (listed most exact first): the fastest that
    passed verification, float32 when none did."""
    try:
        return fastest_verified(measurements).name
    except ValueError:
        return "float32"


_PROCESS_CACHE: dict[str, list[PathMeasurement]] = {}


def choose_cpu_path(
    checkpoint_encoding: str | None,
    shapes: ModelShapes | None,
    flags: set[str] | None = None,
    measure: Measure | None = None,
    cache_file: Path | None = None,
) -> CpuChoice:
    """The path `auto` takes on this CPU (see the module docstring). `measure` (default
    `measure_paths`) and `cache_file` (default `default_cache_file()`) are injectable for
    tests; `flags` default to this CPU's."""
    from max.nn.int8_dynamic_linear import int8_dynamic_supported

    flags = cpu_flags() if flags is None else flags
    names = candidate_paths(checkpoint_encoding, flags, int8_dynamic_supported())
    if len(names) == 1:
        return CpuChoice(names[0], *settings_of(names[0], checkpoint_encoding), (), "flags: the only candidate")
    if shapes is None:
        # Nothing to measure at: the flags' rule (bfloat16 where the CPU has it natively).
        native = flags is not None and bool(flags & {"avx512_bf16", "amx_bf16"})
        enc = choose_cpu_encoding(checkpoint_encoding, bfloat16_native=native)
        path = enc if enc in ("float32", "bfloat16") else "int4" if enc in INT4_ENCODINGS else "int8"
        return CpuChoice(path, enc, None, (), "flags: no layer shapes in the config")
    key = "|".join((f"v{MEASUREMENT_VERSION}", _cpu_name(), torch.__version__, torch.backends.cpu.get_cpu_capability(), _isa_caps(), shapes.key(), ",".join(names)))
    cache_file = default_cache_file() if cache_file is None else cache_file
    measured, how = _cached(key, cache_file), "cached"
    if measured is None:
        run = measure or (lambda n, s, layers, head: measure_paths(n, s, layers, head))
        quiet_before = _quiet()
        measured, how = run(names, shapes.layers, shapes.num_layers, shapes.head), "measured"
        if not (quiet_before and _quiet()):
            # Figures taken while other work shares the cores are kept for this process only.
            how, cache_file = f"measured under load {os.getloadavg()[0]:.1f} (not saved)", None
        _store(key, measured, cache_file)
    path = pick(measured)
    return CpuChoice(path, *settings_of(path, checkpoint_encoding), tuple(measured), how)


def default_cache_file() -> Path | None:
    """Where measurements persist between runs (None: this process only)."""
    configured = os.environ.get("MAX_CPU_WEIGHT_PATH_CACHE")
    if configured is not None:
        return None if configured.lower() in ("", "0", "off", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "max" / "cpu_weight_paths.json"


def _cached(key: str, cache_file: Path | None) -> list[PathMeasurement] | None:
    if key in _PROCESS_CACHE:
        return _PROCESS_CACHE[key]
    if cache_file is None:
        return None
    try:
        entry = json.loads(cache_file.read_text()).get(key)
        found = None if entry is None else [PathMeasurement.from_json(d) for d in entry]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a missing or damaged cache only costs a measurement
    if found is not None:
        _PROCESS_CACHE[key] = found
    return found


def _store(key: str, measured: list[PathMeasurement], cache_file: Path | None) -> None:
    _PROCESS_CACHE[key] = measured
    if cache_file is None:
        return
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        data = {}  # none yet, or damaged: start afresh
    if not isinstance(data, dict):
        data = {}
    try:
        data[key] = [m.to_json() for m in measured]
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(cache_file)  # atomic: concurrent starts never read half a file
    except (OSError, ValueError) as e:
        logger.warning("could not save the CPU weight-path measurements to %s: %s", cache_file, e)


def _quiet() -> bool:
    """Whether the machine's load leaves this process its cores (a load average no higher
    than the cores it may use)."""
    try:
        return os.getloadavg()[0] <= len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return True


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa_caps() -> str:
    # The variables that cap the libraries' instruction sets (an AVX2 emulation on an
    # AVX-512 machine) change the timings, so they are part of the key.
    names = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS")
    return ",".join(f"{n}={os.environ[n]}" for n in names if n in os.environ)
