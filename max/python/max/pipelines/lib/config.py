"""Pipeline configuration: which model, on which device, with which engine limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from max.errors import MaxError

FLOAT_ENCODINGS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# GGUF quantized encodings: weights are read in this encoding and decoded to a float dtype.
QUANTIZED_ENCODINGS = ("q4_0", "q4_1", "q5_0", "q4_k", "q5_k", "q6_k", "q8_0")
ENCODINGS = (*FLOAT_ENCODINGS, *QUANTIZED_ENCODINGS)
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
# `auto`: Triton kernels on the GPU, torch references elsewhere; `torch`: references only.
KERNEL_BACKENDS = ("auto", "torch")


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
    weight_path: list[str] = field(default_factory=list)
    quantization_encoding: str | None = None
    devices: str = "cpu"
    max_length: int | None = None
    max_batch_size: int = 64
    max_num_batched_tokens: int | None = None
    kv_cache_page_size: int = 128
    kv_cache_memory: int | None = None
    device_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    custom_architectures: list[str] = field(default_factory=list)
    load_format: str = "auto"
    enforce_eager: bool = False
    async_scheduling: bool = True
    kernels: str = "auto"
    seed: int = 0
    # Another model's tokenizer (path or repo id), e.g. for a config-only folder.
    tokenizer: str | None = None
    # No tokenizer at all: prompts and outputs are token ids.
    skip_tokenizer_init: bool = False

    def validate(self) -> None:
        """Raises MaxError naming the first setting out of range."""
        if self.quantization_encoding is not None and self.quantization_encoding not in ENCODINGS:
            raise MaxError(
                f"unknown encoding {self.quantization_encoding!r} (choose from {', '.join(ENCODINGS)})"
            )
        if self.kernels not in KERNEL_BACKENDS:
            raise MaxError(f"unknown kernel backend {self.kernels!r} ({', '.join(KERNEL_BACKENDS)})")
        if self.load_format not in LOAD_FORMATS:
            raise MaxError(f"unknown load format {self.load_format!r} ({', '.join(LOAD_FORMATS)})")
        if self.tokenizer is not None and self.skip_tokenizer_init:
            raise MaxError("--tokenizer and --skip-tokenizer-init exclude each other")
        for name in ("max_batch_size", "kv_cache_page_size"):
            if getattr(self, name) < 1:
                raise MaxError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_length", "max_num_batched_tokens", "kv_cache_memory"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MaxError(f"{name} must be at least 1 (got {value})")
        if not 0.0 < self.device_memory_utilization <= 1.0:
            raise MaxError("device_memory_utilization must be in (0, 1]")
        parse_device(self.devices)

    @property
    def device(self) -> torch.device:
        """The torch device the model runs on."""
        return parse_device(self.devices)

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
            return torch.float32
        if default_encoding in FLOAT_ENCODINGS:
            return FLOAT_ENCODINGS[default_encoding]
        return torch.bfloat16

    def token_budget(self) -> int:
        """Tokens per step (chunked-prefill budget)."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return 512 if self.device.type == "cpu" else 8192
