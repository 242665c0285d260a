"""Pipeline configuration: which model, on which device, with which engine limits."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

import torch

from max.errors import MaxError
from max.kv_cache import KV_CACHE_DTYPES

FLOAT_ENCODINGS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# GGUF quantized encodings: weights are read in this encoding and decoded to a float dtype.
QUANTIZED_ENCODINGS = ("q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "q8_0")
ENCODINGS = (*FLOAT_ENCODINGS, *QUANTIZED_ENCODINGS)
# On the CPU a quantized encoding keeps the linear layers' weights quantized in memory
# (max.nn.quantized_linear), at no fewer bits than the encoding's, and computes in bfloat16.
# Elsewhere (GPU) quantized weights are decoded to the float dtype, as before.
WEIGHT_ONLY_SCHEMES = {
    "q8_0": "int8",
    "q6_k": "int8",
    "q5_0": "int8",
    "q5_k": "int8",
    "q4_0": "int4",
    "q4_1": "int4",
    "q4_k": "int4",
}
# `auto` (the CLI's default for generate and serve): the fastest encoding the CPU and the
# checkpoint allow, chosen when the model is resolved (see `choose_cpu_encoding`). The
# library's default (None) stays float32 on the CPU: the verification reference.
AUTO_ENCODING = "auto"
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
# `auto`: Triton kernels on the GPU, torch references elsewhere; `torch`: references only.
KERNEL_BACKENDS = ("auto", "torch")
# Quantization applied on load to a float checkpoint (vLLM's `--quantization`): `fp8` holds
# the decoder's linear weights in e4m3 and quantizes activations per token
# (max.nn.fp8_linear).
QUANTIZATION_METHODS = ("fp8",)


def parse_device(spec: str) -> torch.device:
    """`cpu`, `gpu`, `gpu:N`, `cuda` or `cuda:N` -> a torch device (the GPU must exist)."""
    text = spec.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"(gpu|cuda)(?::(\d+))?", text)
    if not m:
        raise MaxError(f"unknown device {spec!r}: use cpu, gpu or gpu:N")
    index = int(m.group(2) or 0)
    if not torch.cuda.is_available():
        raise MaxError(f"device {spec!r} was asked for, but no GPU is available")
    if index >= torch.cuda.device_count():
        raise MaxError(f"device {spec!r}: only {torch.cuda.device_count()} GPU(s) are present")
    return torch.device("cuda", index)


def parse_devices(spec: str) -> list[torch.device]:
    """`cpu`, `gpu`, `gpu:N` or MAX's list form `gpu:0,1,2,3` -> torch devices."""
    text = spec.strip().lower()
    m = re.fullmatch(r"(gpu|cuda):(\d+(?:,\d+)+)", text)
    if not m:
        return [parse_device(spec)]
    indices = [int(i) for i in m.group(2).split(",")]
    if len(set(indices)) != len(indices):
        raise MaxError(f"device list {spec!r} names a GPU twice")
    return [parse_device(f"gpu:{i}") for i in indices]


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun (or the same environment
    variables set by hand for several hosts), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0") or 0)


def parse_memory(text: str | int | None) -> int | None:
    """'2GiB', '512MiB', '1.5G' or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise MaxError(f"cannot read memory size {text!r} (e.g. 2GiB, 512MiB)")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


@dataclass
class PipelineConfig:
    """Everything needed to build a text-generation pipeline.

    Defaults that depend on the device (encoding, token budget, KV memory) stay None here
    and are resolved when the pipeline is built.
    """

    model_path: str | None = None
    # Branch, tag or commit of a Hub repo `model_path` (None: its default branch).
    revision: str | None = None
    weight_path: list[str] = field(default_factory=list)
    quantization_encoding: str | None = None
    devices: str = "cpu"
    max_length: int | None = None
    max_batch_size: int = 64
    max_num_batched_tokens: int | None = None
    kv_cache_page_size: int = 128
    kv_cache_memory: int | None = None
    # A KV_CACHE_DTYPES name: `auto` is the compute dtype; `fp8` stores e4m3 (one byte).
    kv_cache_dtype: str = "auto"
    device_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    custom_architectures: list[str] = field(default_factory=list)
    load_format: str = "auto"
    enforce_eager: bool = False
    async_scheduling: bool = True
    kernels: str = "auto"
    # None, or a QUANTIZATION_METHODS entry applied to the float weights on load.
    quantization: str | None = None
    tensor_parallel_size: int | None = None  # None: the GPUs `devices` lists, else 1
    data_parallel_size: int = 1
    # Which tensor-parallel rank of the group this config builds (set by `for_rank`).
    tp_rank: int = 0
    seed: int = 0
    # Another model's tokenizer (path or repo id), e.g. for a config-only folder.
    tokenizer: str | None = None
    # No tokenizer at all: prompts and outputs are token ids.
    skip_tokenizer_init: bool = False
    # A step that makes no progress for this many seconds is a hung engine: its requests
    # fail and the engine is restarted (tensor-parallel collectives time out after it too).
    engine_step_timeout: float = 300.0

    def validate(self) -> None:
        """Raises MaxError naming the first setting out of range."""
        enc = self.quantization_encoding
        if enc is not None and enc not in ENCODINGS and enc != AUTO_ENCODING:
            raise MaxError(f"unknown encoding {enc!r} (choose from {AUTO_ENCODING}, {', '.join(ENCODINGS)})")
        if self.kernels not in KERNEL_BACKENDS:
            raise MaxError(f"unknown kernel backend {self.kernels!r} ({', '.join(KERNEL_BACKENDS)})")
        self._check_quantization()
        if self.load_format not in LOAD_FORMATS:
            raise MaxError(f"unknown load format {self.load_format!r} ({', '.join(LOAD_FORMATS)})")
        if self.tokenizer is not None and self.skip_tokenizer_init:
            raise MaxError("--tokenizer and --skip-tokenizer-init exclude each other")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise MaxError(f"unknown KV cache dtype {self.kv_cache_dtype!r} ({', '.join(KV_CACHE_DTYPES)})")
        for name in ("max_batch_size", "kv_cache_page_size"):
            if getattr(self, name) < 1:
                raise MaxError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_length", "max_num_batched_tokens", "kv_cache_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MaxError(f"{name} must be at least 1 (got {value})")
        if not self.engine_step_timeout > 0:
            raise MaxError(f"engine_step_timeout must be more than 0 seconds (got {self.engine_step_timeout})")
        if not 0.0 < self.device_memory_utilization <= 1.0:
            raise MaxError("device_memory_utilization must be in (0, 1]")
        self._check_parallel_sizes()

    @property
    def device_list(self) -> list[torch.device]:
        """Every device `devices` names (one unless it is a list like gpu:0,1)."""
        return parse_devices(self.devices)

    @property
    def device(self) -> torch.device:
        """The device of this process's model (rank `tp_rank`'s with tensor parallelism;
        under torchrun, the GPU of LOCAL_RANK)."""
        world = torchrun_world()
        devices = self.device_list
        if world is not None and devices[0].type == "cuda":
            return torch.device("cuda", world[2])
        return self.rank_devices()[self.tp_rank]

    @property
    def tp_size(self) -> int:
        """Ranks of the tensor-parallel group of one replica."""
        world = torchrun_world()
        if world is not None:
            return world[1]
        if self.tensor_parallel_size is not None:
            return self.tensor_parallel_size
        return max(1, len(self.device_list) // self.data_parallel_size)

    def rank_devices(self) -> list[torch.device]:
        """The device of each tensor-parallel rank of this replica (all `cpu` on the CPU)."""
        devices = self.device_list
        if devices[0].type == "cpu":
            return devices * self.tp_size
        if len(devices) == 1 and self.tp_size > 1:  # `gpu` with --tensor-parallel-size N
            devices = [torch.device("cuda", devices[0].index + r) for r in range(self.tp_size)]
        return devices[: self.tp_size]

    def replica(self, index: int) -> PipelineConfig:
        """The config of data-parallel replica `index`: its own slice of the GPUs."""
        tp = self.tp_size
        devices = self.device_list
        if devices[0].type == "cuda":
            first = devices[0].index if len(devices) == 1 else None
            chosen = (
                [first + index * tp + r for r in range(tp)]
                if first is not None
                else [d.index for d in devices[index * tp : (index + 1) * tp]]
            )
            spec = "gpu:" + ",".join(str(i) for i in chosen) if len(chosen) > 1 else f"gpu:{chosen[0]}"
        else:
            spec = self.devices
        return dataclasses.replace(self, devices=spec, data_parallel_size=1, tensor_parallel_size=tp)

    def for_rank(self, rank: int) -> PipelineConfig:
        """The config a tensor-parallel rank builds its shard with: the group's devices, and
        which of them is this rank's (`device`)."""
        devices = self.rank_devices()
        spec = "cpu" if devices[0].type == "cpu" else "gpu:" + ",".join(str(d.index) for d in devices)
        return dataclasses.replace(
            self, devices=spec, tensor_parallel_size=self.tp_size, data_parallel_size=1, tp_rank=rank
        )

    def _check_quantization(self) -> None:
        method = self.quantization
        if method is None:
            return
        if method not in QUANTIZATION_METHODS:
            raise MaxError(f"unknown quantization {method!r} (choose from {', '.join(QUANTIZATION_METHODS)})")
        if self.quantization_encoding in QUANTIZED_ENCODINGS:
            raise MaxError(
                f"--quantization {method} quantizes float weights; it cannot be combined with "
                f"the quantized encoding {self.quantization_encoding}"
            )
        from max_kernels.fp8 import fp8_supported  # only when asked for: it imports Triton

        device = self.device_list[0]
        if device.type == "cuda" and not fp8_supported(device):
            major, minor = torch.cuda.get_device_capability(device)
            raise MaxError(
                f"--quantization {method} needs a GPU with FP8 tensor cores (compute capability "
                f"8.9 or newer); {torch.cuda.get_device_name(device)} has {major}.{minor}"
            )

    def _check_parallel_sizes(self) -> None:
        tp, dp = self.tp_size, self.data_parallel_size
        if tp < 1 or dp < 1:
            raise MaxError("--tensor-parallel-size and --data-parallel-size must be at least 1")
        devices = self.device_list
        if devices[0].type != "cuda" or torchrun_world() is not None:
            return
        needed = tp * dp
        if len(devices) > 1:
            if len(devices) < needed:
                raise MaxError(
                    f"{needed} ranks ({tp} tensor-parallel x {dp} data-parallel) need {needed} GPUs; "
                    f"--devices {self.devices} lists {len(devices)}"
                )
        elif devices[0].index + needed > torch.cuda.device_count():
            raise MaxError(
                f"{needed} ranks ({tp} tensor-parallel x {dp} data-parallel) need {needed} GPUs from "
                f"gpu:{devices[0].index}; only {torch.cuda.device_count()} are present"
            )

    def dtype(self, default_encoding: str | None = None) -> torch.dtype:
        """The float dtype weights and activations use.

        A float encoding is used as is. A quantized (GGUF) encoding, or none, means the
        device's natural dtype: float32 on CPU, bfloat16 on GPU (unless the architecture's
        default encoding is a float one, which then applies on GPU).
        """
        enc = self.quantization_encoding
        if enc in FLOAT_ENCODINGS:
            return FLOAT_ENCODINGS[enc]
        if self.device.type == "cpu":
            # Weight-only quantized layers compute in bfloat16 (their float32 kernels are
            # reference loops); anything else stays float32, the verification reference.
            return torch.bfloat16 if self.weight_quantization() else torch.float32
        if default_encoding in FLOAT_ENCODINGS:
            return FLOAT_ENCODINGS[default_encoding]
        return torch.bfloat16

    def weight_quantization(self) -> str | None:
        """`int8` or `int4` when the linear layers keep quantized weights (a quantized
        encoding on the CPU), else None."""
        if self.device.type != "cpu":
            return None
        return WEIGHT_ONLY_SCHEMES.get(self.quantization_encoding or "")

    def token_budget(self) -> int:
        """Tokens per step (chunked-prefill budget)."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return 512 if self.device.type == "cpu" else 8192


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
    """The encoding `auto` means on the CPU, for a checkpoint whose weights are mostly in
    `checkpoint_encoding` (a GGUF type name such as `q4_1`, or None for float weights).

    With native bfloat16: a quantized GGUF keeps its weights quantized (`q4_1` -> int4), a
    float checkpoint computes in bfloat16. Without it: float32, as before."""
    native = cpu_supports_bfloat16() if bfloat16_native is None else bfloat16_native
    if not native:
        return "float32"
    if checkpoint_encoding in WEIGHT_ONLY_SCHEMES:
        return checkpoint_encoding
    return "bfloat16"
