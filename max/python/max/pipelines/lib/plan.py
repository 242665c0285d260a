"""The execution plan: every setting a built pipeline runs with, resolved once.

`PipelineConfig` is what the user asked for, in the user's words (device specs, encoding
names, `auto`). `resolve_plan` turns it, once, when the model is resolved, into a frozen
`ExecutionPlan`: this process's device and the tensor-parallel group's, the compute dtype,
how the linear weights are held (`WeightScheme`), the KV cache's dtype, the kernel backend
and switches, whether decode steps replay CUDA graphs, the step's token budget, the CPU's
thread count. Nothing below the builder re-derives these from strings or the environment.

An encoding name means the same on every device: `q4_k` (and the other GGUF encodings)
keeps the linear weights quantized (int4 or int8). A GPU holds the 4-bit ones in the int4
layout of its kernels (`W4A16`, groups of 32; the file's wider layers in int8) and the 5- to
8-bit ones in the int8 layout (`W8A16`, groups of 32). A pre-quantized safetensors checkpoint (FP8, GPTQ,
AWQ: config.json's `quantization_config`) picks its own scheme (`checkpoint_scheme`).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

import torch

from max.errors import MaxError
from max.kv_cache import kv_cache_dtype
from max.pipelines.lib.config import (
    FLOAT_ENCODINGS,
    QUANTIZED_ENCODINGS,
    WEIGHT_ONLY_SCHEMES,
    PipelineConfig,
    TorchrunWorld,
)
from max.pipelines.lib.weights.quantization_config import FP8, CheckpointQuantization

# Tokens per step (the chunked-prefill budget) unless --max-num-batched-tokens says.
CPU_TOKEN_BUDGET = 512
GPU_TOKEN_BUDGET = 8192


class WeightScheme(enum.StrEnum):
    """How the decoder's linear layers hold their weights."""

    FLOAT = "float"  # in the compute dtype
    INT8 = "int8"  # CPU weight-only int8 per channel (GGUF encodings of 5 to 8 bits)
    INT4 = "int4"  # CPU weight-only int4 in groups (GGUF encodings of 4 bits)
    INT8_DYNAMIC = "int8_dynamic"  # CPU int8 weights and activations (fbgemm): --quantization int8_dynamic
    FP8 = "fp8"  # e4m3 per row: quantized on load (--quantization fp8), or an FP8 checkpoint's codes
    W4A16 = "w4a16"  # int4 in groups, our layout (max.nn.int4_linear): GPTQ/AWQ, --quantization int4, 4-bit GGUF on a GPU
    W8A16 = "w8a16"  # int8 in groups of 32, our layout (max.nn.int8_linear): 5- to 8-bit GGUF on a GPU


# The CPU's quantized schemes (max.nn.quantized_linear builds their layers).
CPU_QUANTIZED_SCHEMES = (WeightScheme.INT8, WeightScheme.INT4, WeightScheme.INT8_DYNAMIC)


@dataclass(frozen=True)
class ExecutionPlan:
    """How this process runs its pipeline (see the module docstring)."""

    device: torch.device
    rank_devices: tuple[torch.device, ...]
    tp_rank: int
    tp_size: int
    torchrun: TorchrunWorld | None
    dtype: torch.dtype
    weight_scheme: WeightScheme
    kv_cache_dtype: torch.dtype
    kernels: str  # "auto" (Triton on CUDA) or "torch" (the references everywhere)
    gemv: bool
    pdl: bool
    cuda_graphs: bool
    warm_eager_kernels: bool
    async_scheduling: bool
    token_budget: int
    cpu_threads: int
    # A pre-quantized checkpoint's scheme (config.json's quantization_config), None for float.
    checkpoint_quantization: CheckpointQuantization | None = None

    @property
    def on_gpu(self) -> bool:
        """The model runs on a CUDA device."""
        return self.device.type == "cuda"


def resolve_plan(
    config: PipelineConfig,
    default_encoding: str | None = None,
    checkpoint_quantization: CheckpointQuantization | None = None,
) -> ExecutionPlan:
    """The plan of `config` (its encoding already resolved from `auto`), for an architecture
    whose default encoding is `default_encoding` and a checkpoint quantized as
    `checkpoint_quantization` says (None: float). Raises MaxError for an encoding the device
    cannot run, or flags that contradict the checkpoint."""
    device = config.device
    enc = config.quantization_encoding
    gpu = device.type == "cuda"
    if checkpoint_quantization is not None:
        scheme = checkpoint_scheme(config, checkpoint_quantization)
    elif config.quantization == "fp8":
        scheme = WeightScheme.FP8
    elif config.quantization == "int4":
        scheme = WeightScheme.W4A16
    elif config.quantization == "int8_dynamic":
        if gpu:
            raise MaxError("--quantization int8_dynamic runs on the CPU only (fbgemm); on the GPU use fp8 or int4")
        scheme = WeightScheme.INT8_DYNAMIC
    elif enc in WEIGHT_ONLY_SCHEMES:
        # A GPU holds GGUF weights in the int4 / int8 layouts of its Triton kernels.
        scheme = WeightScheme(WEIGHT_ONLY_SCHEMES[enc])
        if gpu:
            scheme = WeightScheme.W4A16 if scheme == WeightScheme.INT4 else WeightScheme.W8A16
    else:
        scheme = WeightScheme.FLOAT
    if scheme == WeightScheme.W4A16 and config.tp_size > 1:
        raise MaxError("int4 weights (GPTQ / AWQ checkpoints, --quantization int4, 4-bit GGUF on a GPU) do not support tensor parallelism yet")
    if scheme == WeightScheme.W8A16 and config.tp_size > 1:
        raise MaxError("int8 weights (5- to 8-bit GGUF on a GPU) do not support tensor parallelism yet")
    dtype = _dtype(enc, gpu, scheme, default_encoding)
    triton = gpu and config.kernels == "auto"
    return ExecutionPlan(
        device=device,
        rank_devices=tuple(config.rank_devices()),
        tp_rank=config.tp_rank,
        tp_size=config.tp_size,
        torchrun=config.torchrun,
        dtype=dtype,
        weight_scheme=scheme,
        kv_cache_dtype=kv_cache_dtype(config.kv_cache_dtype, dtype),
        kernels=config.kernels,
        gemv=config.gemv,
        pdl=config.pdl,
        # Graphs replay the Triton kernels only; the torch reference ops are shaped on the host.
        cuda_graphs=triton and not config.enforce_eager,
        warm_eager_kernels=triton,
        async_scheduling=gpu and config.async_scheduling,
        token_budget=config.max_num_batched_tokens or (GPU_TOKEN_BUDGET if gpu else CPU_TOKEN_BUDGET),
        cpu_threads=config.cpu_threads or _cores(),
        checkpoint_quantization=checkpoint_quantization,
    )


def checkpoint_scheme(config: PipelineConfig, quant: CheckpointQuantization) -> WeightScheme:
    """How a pre-quantized checkpoint's layers are held on this device: FP8 through the FP8
    kernels where the GPU has FP8 tensor cores, else dequantized to the float dtype (the
    CPU's reference path, and older GPUs); int4 in our int4 layout everywhere (the CPU
    computes its exact reference). Raises MaxError for flags that contradict it."""
    if config.quantization is not None:
        raise MaxError(
            f"--quantization {config.quantization} quantizes a float checkpoint on load, but this checkpoint "
            f"is already quantized ({quant.describe()}): drop --quantization"
        )
    if config.quantization_encoding in QUANTIZED_ENCODINGS:
        raise MaxError(
            f"--quantization-encoding {config.quantization_encoding} is a GGUF encoding; this checkpoint is "
            f"{quant.describe()}: use auto, float32, bfloat16 or float16 (the compute dtype)"
        )
    if quant.method == FP8:
        from max_kernels.fp8 import fp8_supported  # only for FP8 checkpoints: it imports Triton

        return WeightScheme.FP8 if fp8_supported(config.device) else WeightScheme.FLOAT
    return WeightScheme.W4A16


def _dtype(enc: str | None, gpu: bool, scheme: WeightScheme, default_encoding: str | None) -> torch.dtype:
    """The float dtype weights and activations use: a float encoding as is; otherwise the
    device's natural one (float32 on the CPU, the verification reference, but bfloat16
    under weight-only int8/int4, whose float32 kernels are reference loops; on a GPU the
    architecture's default float encoding, else bfloat16)."""
    if enc in FLOAT_ENCODINGS:
        return FLOAT_ENCODINGS[enc]
    if not gpu:
        return torch.bfloat16 if scheme in CPU_QUANTIZED_SCHEMES else torch.float32
    if default_encoding in FLOAT_ENCODINGS:
        return FLOAT_ENCODINGS[default_encoding]
    return torch.bfloat16


def _cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset`
    narrow; torch's own default counts the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_supports_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so that bfloat16
    compute is faster than float32 rather than emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def choose_cpu_encoding(checkpoint_encoding: str | None, bfloat16_native: bool | None = None) -> str:
    """The encoding `auto` means on the CPU by the flags alone, for a checkpoint whose
    weights are mostly in `checkpoint_encoding` (a GGUF type name such as `q4_1`, or None
    for float weights). `auto` measures instead (`cpu_encoding_choice`); this rule is its
    fallback where the config gives no layer shapes to measure at.

    With native bfloat16: a quantized GGUF keeps its weights quantized (`q4_1` -> int4), a
    float checkpoint computes in bfloat16. Without it: float32, as before."""
    native = cpu_supports_bfloat16() if bfloat16_native is None else bfloat16_native
    if not native:
        return "float32"
    if checkpoint_encoding in WEIGHT_ONLY_SCHEMES:
        return checkpoint_encoding
    return "bfloat16"
