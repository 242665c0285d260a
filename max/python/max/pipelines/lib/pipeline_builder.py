"""Building a pipeline from a `PipelineConfig`: find the model, pick its architecture,
load the tokenizer, load the weights, size the KV cache, start the engine.

Finding and tokenizing are cheap and done wherever they are needed (the HTTP process
needs the tokenizer, not the weights); `build_engine` does the heavy part.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from max.errors import MaxError
from max.kv_cache import PagedKVCache
from max.nn import TensorParallel, tensor_parallel_context
from max.pipelines.lib.config import (
    AUTO_ENCODING,
    FLOAT_ENCODINGS,
    WEIGHT_ONLY_SCHEMES,
    PipelineConfig,
    choose_cpu_encoding,
    torchrun_world,
)
from max.pipelines.lib.engine.llm_engine import LLMEngine
from max.pipelines.lib.hub.hf_config import (
    architecture_name,
    eos_token_ids,
    load_hf_config,
    text_config,
)
from max.pipelines.lib.hub.model_source import (
    ModelSource,
    has_tokenizer_files,
    resolve_model_source,
    resolve_tokenizer_source,
)
from max.pipelines.lib.model.memory_plan import MemoryReport
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.model.registry import (
    PIPELINE_REGISTRY,
    PipelineRegistry,
    register_custom_architectures,
)
from max.pipelines.lib.model.supported_architecture import SupportedArchitecture
from max.pipelines.lib.runner.model_runner import ModelRunner
from max.pipelines.lib.runner.tensor_parallel import (
    RankGroup,
    TensorParallelRunner,
    exit_with_parent,
    join_group,
    receive_header,
    receive_inputs,
    start_tensor_parallel,
)
from max.pipelines.lib.sampling.structured_output import GrammarBackend
from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.weights import (
    Checkpoint,
    GGUFFile,
    WeightsFormat,
    open_gguf,
    open_safetensors,
)
from max_kernels import set_backend as set_kernel_backend

logger = logging.getLogger("max.pipelines")

_CPU_KV_DEFAULT = 2 * 2**30


@dataclass
class ResolvedModel:
    """A model located and identified, with its config; no weights loaded yet."""

    config: PipelineConfig
    source: ModelSource
    architecture: SupportedArchitecture
    hf_config: Any
    gguf: GGUFFile | None

    @property
    def max_seq_len(self) -> int:
        """Longest prompt + output served."""
        return self.architecture.pipeline_model.calculate_max_seq_len(self.config, self.hf_config)

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype the model computes in."""
        return self.config.dtype(self.architecture.default_encoding)

    def eos_token_ids(self) -> set[int]:
        """End-of-sequence ids from the config and generation_config.json."""
        ids = eos_token_ids(self.hf_config)
        gen = self.source.directory / "generation_config.json"
        if self.source.weights_format == WeightsFormat.safetensors and gen.is_file():
            try:
                eos = json.loads(gen.read_text()).get("eos_token_id")
            except ValueError:
                eos = None
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list):
                ids.update(int(e) for e in eos)
        return ids


def resolve_model(config: PipelineConfig, registry: PipelineRegistry = PIPELINE_REGISTRY) -> ResolvedModel:
    """Locates the model, reads its config and finds its architecture."""
    config.validate()
    register_custom_architectures(config.custom_architectures, registry)
    auto = config.quantization_encoding == AUTO_ENCODING
    source = resolve_model_source(
        config.model_path, config.weight_path, config.load_format, config.revision,
        None if auto else config.quantization_encoding,
    )
    if source.commit is not None:
        # Pinned, so that the processes started from this config (engine, ranks, replicas)
        # load the same commit from the cache without asking the Hub again.
        config.revision = source.commit
    gguf = GGUFFile(source.gguf_file) if source.gguf_file is not None else None
    arch = registry.retrieve(architecture_name(source, gguf))
    if source.weights_format not in arch.weight_adapters:
        raise MaxError(
            f"architecture {arch.name} cannot read {source.weights_format.value} weights "
            f"(it reads: {', '.join(f.value for f in arch.weight_adapters)})"
        )
    if auto:
        # Pinned, so that every process built from this config computes the same way.
        config.quantization_encoding = _auto_encoding(config, gguf, arch)
    enc = config.quantization_encoding
    if enc in WEIGHT_ONLY_SCHEMES and config.device.type == "cpu" and config.tp_size > 1:
        raise MaxError(
            f"--quantization-encoding {enc} keeps weights quantized on the CPU, which runs in one "
            "process: drop --tensor-parallel-size, or use float32 or bfloat16"
        )
    if enc in FLOAT_ENCODINGS and enc not in arch.supported_encodings:
        raise MaxError(
            f"encoding {enc} is not supported by {arch.name} "
            f"(supported: {', '.join(arch.supported_encodings)})"
        )
    hf_config = load_hf_config(source, config.trust_remote_code, gguf)
    return ResolvedModel(config, source, arch, hf_config, gguf)


def gguf_weights_encoding(gguf: GGUFFile) -> str:
    """The encoding (lower-case GGML type name, e.g. `q4_1`) that holds most of a GGUF
    file's matrix elements."""
    counts: dict[str, int] = {}
    for info in gguf.tensors.values():
        if len(info.shape) == 2:
            name = info.type_name.lower()
            counts[name] = counts.get(name, 0) + info.shape[0] * info.shape[1]
    return max(counts, key=counts.get) if counts else "float32"


def _auto_encoding(config: PipelineConfig, gguf: GGUFFile | None, arch: SupportedArchitecture) -> str | None:
    """What `--quantization-encoding auto` means for this model: on the CPU the fastest
    encoding it allows (`choose_cpu_encoding`); elsewhere the device's default (None)."""
    if config.device.type != "cpu" or config.tp_size > 1:
        return None
    checkpoint = gguf_weights_encoding(gguf) if gguf is not None and config.load_format != "dummy" else None
    # `--quantization` quantizes float weights: a quantized GGUF is then read as float.
    enc = choose_cpu_encoding(None if config.quantization else checkpoint)
    if enc in FLOAT_ENCODINGS and enc not in arch.supported_encodings:
        return "float32"
    return enc


def describe_encoding(config: PipelineConfig, dtype: torch.dtype) -> str:
    """One line saying how the weights are held and what the model computes in."""
    enc = config.quantization_encoding or "default"
    scheme = config.weight_quantization()
    dt = str(dtype).removeprefix("torch.")
    if scheme is not None:
        held = "int8 per channel" if scheme == "int8" else "int4 in groups of 32 (int8 where the file has more bits)"
        return f"encoding {enc}: linear weights kept as {held}, embeddings and LM head {dt}, compute {dt}, on {config.device}"
    if config.quantization == "fp8":
        return (
            f"encoding {enc} with --quantization fp8: decoder linear weights e4m3 per channel, activations "
            f"per token; embeddings and LM head {dt}, on {config.device}"
        )
    return f"encoding {enc}: weights and compute {dt}, on {config.device}"


def set_cpu_threads() -> int:
    """Gives torch's intra-op pool one thread per core this process may run on (its CPU
    affinity, which containers and `taskset` narrow; torch's own default counts the
    machine's cores), unless OMP_NUM_THREADS or MAX_CPU_THREADS says otherwise."""
    wanted = os.environ.get("MAX_CPU_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if wanted and wanted.isdigit() and int(wanted) > 0:
        threads = int(wanted)
    else:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.info("CPU: %d torch threads", threads)
    return threads


def tokenizer_source(resolved: ResolvedModel) -> ModelSource:
    """Where the tokenizer comes from: `--tokenizer`, else the model's own files.

    Cheap (no tokenizer is built), so callers can fail before loading any weights.
    """
    config = resolved.config
    if config.tokenizer is not None:
        return resolve_tokenizer_source(config.tokenizer)
    source = resolved.source
    if source.gguf_file is None and not has_tokenizer_files(source.directory):
        raise MaxError(
            f"{source.directory} holds no tokenizer: pass --tokenizer PATH_OR_REPO to use "
            "another model's tokenizer, or --skip-tokenizer-init to run without one "
            "(prompts and outputs as token ids)"
        )
    return source


def load_tokenizer(resolved: ResolvedModel) -> TextTokenizer | None:
    """The tokenizer (None with `skip_tokenizer_init`: prompts and outputs are token ids)."""
    if resolved.config.skip_tokenizer_init:
        return None
    return resolved.architecture.tokenizer.from_source(
        tokenizer_source(resolved), resolved.hf_config, resolved.config.trust_remote_code
    )


def _kv_budget(resolved: ResolvedModel, device: torch.device, needed: int, activations: int) -> int:
    config = resolved.config
    if config.kv_cache_memory is not None:
        return config.kv_cache_memory
    if device.type == "cuda":
        # Memory this process's allocator holds but no tensor uses (e.g. an earlier engine's)
        # counts as free too.
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        reserve = (1.0 - config.device_memory_utilization) * total
        # The steps' activations and the CUDA graphs' pool are taken after the KV cache.
        available = max(int(free - reserve - activations), 0)
    else:
        available = _CPU_KV_DEFAULT
    # Never more than a full batch of full-length requests can use.
    return min(available, needed)


def open_checkpoint(resolved: ResolvedModel) -> Checkpoint | None:
    """The model's checkpoint, opened for lazy reads (None with `--load-format dummy`)."""
    if resolved.config.load_format == "dummy":
        return None
    if resolved.source.weights_format == WeightsFormat.gguf:
        return open_gguf(resolved.gguf)
    return open_safetensors(resolved.source.weight_files)


def load_pipeline_model(resolved: ResolvedModel) -> PipelineModel:
    """The architecture's pipeline model with its weights loaded on this process's device
    (its shard, inside a tensor-parallel context)."""
    config, arch = resolved.config, resolved.architecture
    adapter = arch.weight_adapters.get(resolved.source.weights_format)
    return arch.pipeline_model(config, resolved.hf_config, open_checkpoint(resolved), adapter, resolved.dtype, config.device)


def build_rank(resolved: ResolvedModel, group: RankGroup | None = None) -> ModelRunner:
    """This process's runner, over its model (its shard, under tensor parallelism) and KV
    cache.

    Every rank of a tensor-parallel group calls it with the same config: the KV cache gets
    the number of pages that fits on every rank's device.
    """
    config = resolved.config
    device = config.device
    dtype = resolved.dtype
    set_kernel_backend(config.kernels)
    if device.type == "cpu":
        set_cpu_threads()
    else:
        # Triton launches on the current device: a replica or rank on gpu:1 must make it so.
        torch.cuda.set_device(device)
    with tensor_parallel_context(group.tp if group is not None else TensorParallel()):
        model = load_pipeline_model(resolved)
    logger.info(describe_encoding(config, dtype))
    params = model.get_kv_params(resolved.hf_config, config, dtype)
    needed = model.estimate_kv_cache_size(config, resolved.hf_config, dtype)
    activations = model.estimate_activation_memory(max(config.token_budget(), config.max_batch_size), config.max_batch_size)
    budget = _kv_budget(resolved, device, needed, activations)
    num_pages = params.pages_for_budget(budget, model.max_seq_len)
    if group is not None:
        num_pages = group.agree_min(num_pages)
    kv_cache = PagedKVCache(params, num_pages, device, config.enable_prefix_caching)
    logger.info(
        "KV cache: %d pages of %d tokens (%.0f MiB) on %s",
        num_pages,
        params.page_size,
        num_pages * params.bytes_per_page / 2**20,
        device,
    )
    # Graphs replay the Triton kernels only; the torch reference ops are shaped on the host.
    use_graphs = device.type == "cuda" and not config.enforce_eager and config.kernels == "auto"
    free_before = torch.cuda.mem_get_info(device)[0] if use_graphs else 0
    runner = ModelRunner(
        model,
        kv_cache,
        config.max_batch_size,
        use_cuda_graphs=use_graphs,
        max_prefill_tokens=config.token_budget(),
        warm_eager=device.type == "cuda" and config.kernels == "auto",
    )
    report = model.load_report
    model.memory_report = MemoryReport(
        device=str(device),
        weights=report.weight_bytes,
        load_peak=report.peak_bytes,
        kv_cache=num_pages * params.bytes_per_page,
        activations=activations,
        # What capturing took from the card (the graphs' pool, and the workspaces the
        # captured kernels set up).
        cuda_graphs=free_before - torch.cuda.mem_get_info(device)[0] if use_graphs else None,
        total=torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else None,
    )
    logger.info(model.memory_report.summary())
    return runner


def run_tensor_parallel_rank(
    config: PipelineConfig,
    arch_bytes: bytes | None = None,
    rank: int | None = None,
    world: int | None = None,
    addr: str | None = None,
    port: int | None = None,
    parent: int | None = None,
) -> None:
    """A rank other than 0: joins the group, builds its shard, runs every step rank 0 sends
    until told to stop. With no arguments beyond `config`, the torchrun environment says
    who and where this rank is."""
    if parent is not None:
        exit_with_parent(parent)
    if rank is None:
        env = torchrun_world()
        if env is None:
            raise MaxError("run_tensor_parallel_rank needs RANK and WORLD_SIZE (as torchrun sets them)")
        rank, world, _ = env
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    registry = PipelineRegistry()
    register_custom_architectures(config.custom_architectures, registry)
    if arch_bytes is not None:
        registry.register(pickle.loads(arch_bytes), allow_override=True)
    else:
        for arch in PIPELINE_REGISTRY.architectures():
            registry.register(arch, allow_override=True)
    group = join_group(rank, world, addr, port, config.device, config.engine_step_timeout)
    runner = None
    try:
        resolved = resolve_model(config, registry)
        runner = build_rank(resolved, group)
        while True:
            (header,) = receive_header(group)
            if header["op"] == "stop":
                break
            runner.execute(receive_inputs(header, group, runner.kv_cache))
    finally:
        if runner is not None:
            runner.close()  # its graphs hold captured collectives: they go before the group
        if dist.is_initialized():
            dist.destroy_process_group()


def build_engine(resolved: ResolvedModel) -> LLMEngine:
    """Loads the weights, sizes and allocates the KV cache, and returns a ready engine.

    With tensor parallelism this process is rank 0: it starts (or, under torchrun, meets)
    the other ranks, which build their shards alongside.
    """
    config = resolved.config
    group = None
    if config.tp_size > 1:
        if not resolved.architecture.multi_gpu_supported:
            raise MaxError(f"architecture {resolved.architecture.name} does not support tensor parallelism")
        group = start_tensor_parallel(config, resolved.architecture, run_tensor_parallel_rank)
    try:
        runner = build_rank(resolved, group)
    except BaseException:
        if group is not None:
            group.close()
        raise
    if group is not None:
        runner = TensorParallelRunner(runner, group)
    device = config.device
    vocab = int(text_config(resolved.hf_config).vocab_size)
    eos = resolved.eos_token_ids()

    def grammar() -> GrammarBackend:
        tokenizer = load_tokenizer(resolved)
        if tokenizer is None:
            raise MaxError("structured outputs need the model's tokenizer (--skip-tokenizer-init is set)")
        return GrammarBackend(tokenizer.hf, vocab, eos | tokenizer.eos_token_ids)

    return LLMEngine(
        runner,
        config.max_batch_size,
        max(config.token_budget(), 1),
        eos,
        vocab,
        config.enable_prefix_caching,
        async_scheduling=device.type == "cuda" and config.async_scheduling,
        grammar=grammar,
        # Where a step is short enough for a collection's pause to show (the GPU's).
        freeze_startup_objects=device.type == "cuda",
    )
