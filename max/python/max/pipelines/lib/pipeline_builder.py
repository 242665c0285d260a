"""Building a pipeline from a resolved model: load the weights, size the KV cache, start the
runner and the engine (and, under tensor parallelism, the other ranks).

Everything here reads the resolved `ExecutionPlan` (device, dtype, weight scheme, kernels,
graphs, token budget); nothing re-derives it from the config's strings or the environment.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable

import torch
import torch.distributed as dist

from max.errors import MaxError
from max.kv_cache import PagedKVCache
from max.nn import TensorParallel, tensor_parallel_context
from max.nn.lora import attach_lora
from max.pipelines.lib.config import PipelineConfig
from max.pipelines.lib.engine.llm_engine import LLMEngine
from max.pipelines.lib.hub.hf_config import text_config
from max.pipelines.lib.lora.engine_lora import enable_lora
from max.pipelines.lib.model.memory_plan import MemoryReport
from max.pipelines.lib.model.pipeline_model import PipelineModel
from max.pipelines.lib.model.registry import (
    PIPELINE_REGISTRY,
    PipelineRegistry,
    register_custom_architectures,
)
from max.pipelines.lib.model_resolution import (
    ResolvedModel,
    describe_encoding,
    load_tokenizer,
    resolve_model,
)
from max.pipelines.lib.plan import ExecutionPlan
from max.pipelines.lib.pooling.pooling_config import PoolingConfig, read_pooling_config
from max.pipelines.lib.runner.lora_model_runner import LoRAModelRunner
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
from max.pipelines.lib.runner.verify_graphs import verify_graph_shapes, verify_logits_rows
from max.pipelines.lib.sampling.structured_output import GrammarBackend
from max.pipelines.lib.speculative.proposer import DraftProposer
from max.pipelines.lib.speculative.proposer_setup import (
    EAGLE_METHODS,
    EagleSetup,
    build_draft_model,
)
from max.pipelines.lib.speculative.speculative_config import (
    check_implemented,
    parse_speculative_config,
)
from max.pipelines.lib.weights import Checkpoint, WeightsFormat, open_gguf, open_safetensors
from max.pipelines.lib.weights.kv_cache_scales import load_kv_cache_scales, without_kv_cache_scales
from max.pipelines.lib.weights.quantized_layers import dequantized_view
from max_kernels import configure as configure_kernels

logger = logging.getLogger("max.pipelines")

_CPU_KV_DEFAULT = 2 * 2**30


def set_cpu_threads(plan: ExecutionPlan) -> int:
    """Gives torch's intra-op pool the plan's thread count (one per core this process may
    run on unless --cpu-threads said otherwise)."""
    if torch.get_num_threads() != plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    logger.info("CPU: %d torch threads", plan.cpu_threads)
    return plan.cpu_threads


def _kv_budget(resolved: ResolvedModel, needed: int, activations: int) -> int:
    config, device = resolved.config, resolved.plan.device
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
    # KV cache scales go to the KV cache (`load_checkpoint_kv_scales`), not the weights.
    checkpoint = without_kv_cache_scales(open_safetensors(resolved.source.weight_files))
    quant = resolved.plan.checkpoint_quantization
    # A pre-quantized checkpoint's layers are offered as their exact dequantization; the
    # model's quantized layers get their codes back from it (weights.quantized_layers).
    return checkpoint if quant is None else dequantized_view(checkpoint, quant)


def load_checkpoint_kv_scales(resolved: ResolvedModel, kv_cache: PagedKVCache) -> None:
    """Gives an FP8 KV cache the checkpoint's calibrated per-layer scales, if it has any
    (`weights.kv_cache_scales`)."""
    if resolved.config.load_format == "dummy" or resolved.source.weights_format != WeightsFormat.safetensors:
        return
    load_kv_cache_scales(kv_cache, open_safetensors(resolved.source.weight_files))


def load_pipeline_model(resolved: ResolvedModel) -> PipelineModel:
    """The architecture's pipeline model with its weights loaded on this process's device
    (its shard, inside a tensor-parallel context)."""
    arch = resolved.architecture
    adapter = arch.weight_adapters.get(resolved.source.weights_format)
    return arch.pipeline_model(resolved.config, resolved.plan, resolved.hf_config, open_checkpoint(resolved), adapter)


def build_rank(
    resolved: ResolvedModel,
    group: RankGroup | None = None,
    on_model_loaded: Callable[[PipelineModel], None] | None = None,
) -> ModelRunner:
    """This process's runner, over its model (its shard, under tensor parallelism) and KV
    cache. `on_model_loaded` sees the loaded model before the KV cache and the runner (and
    its CUDA graphs) exist: an EAGLE head's feature tap goes in there.

    Every rank of a tensor-parallel group calls it with the same config: the KV cache gets
    the number of pages that fits on every rank's device.
    """
    config, plan = resolved.config, resolved.plan
    device, dtype = plan.device, plan.dtype
    configure_kernels(backend=plan.kernels, gemv=plan.gemv, pdl=plan.pdl)
    if device.type == "cpu":
        set_cpu_threads(plan)
    else:
        # Triton launches on the current device: a replica or rank on gpu:1 must make it so.
        torch.cuda.set_device(device)
    with tensor_parallel_context(group.tp if group is not None else TensorParallel()):
        model = load_pipeline_model(resolved)
    if config.enable_lora:  # before the KV cache takes what is left of the device
        model.lora = attach_lora(model.model, config.max_loras, config.max_lora_rank)
    if on_model_loaded is not None:  # before the KV cache: a head's cache is taken first
        on_model_loaded(model)
    logger.info(describe_encoding(resolved))
    params = model.get_kv_params(resolved.hf_config, config, dtype)
    needed = model.estimate_kv_cache_size(config, resolved.hf_config, dtype)
    activations = model.estimate_activation_memory(max(plan.token_budget, config.max_batch_size), config.max_batch_size)
    # Speculative verify steps replay graphs of up to this many drafts and requests, whose
    # float32 logits buffer is taken after the KV cache.
    speculative = parse_speculative_config(config.speculative_config)
    verify_drafts = speculative.num_speculative_tokens if speculative is not None else 0
    limit = speculative.disable_by_batch_size if speculative is not None else None
    verify_batch = config.max_batch_size if limit is None else min(config.max_batch_size, limit - 1)
    if plan.cuda_graphs:
        shapes = verify_graph_shapes(verify_drafts, verify_batch, plan.token_budget)
        activations += verify_logits_rows(shapes) * model.model_config.vocab_size * 4
    budget = _kv_budget(resolved, needed, activations)
    num_pages = params.pages_for_budget(budget, model.max_seq_len)
    if group is not None:
        num_pages = group.agree_min(num_pages)
    kv_cache = PagedKVCache(params, num_pages, device, config.enable_prefix_caching)
    load_checkpoint_kv_scales(resolved, kv_cache)
    logger.info(
        "KV cache: %d pages of %d tokens (%.0f MiB) on %s",
        num_pages,
        params.page_size,
        num_pages * params.bytes_per_page / 2**20,
        device,
    )
    use_graphs = plan.cuda_graphs
    free_before = torch.cuda.mem_get_info(device)[0] if use_graphs else 0
    runner = (ModelRunner if model.lora is None else LoRAModelRunner)(
        model,
        kv_cache,
        config.max_batch_size,
        use_cuda_graphs=use_graphs,
        max_prefill_tokens=plan.token_budget,
        warm_eager=plan.warm_eager_kernels,
        verify_drafts=verify_drafts,
        verify_batch_size=verify_batch,
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
    who and where this rank is (`config.torchrun`)."""
    if parent is not None:
        exit_with_parent(parent)
    if rank is None:
        env = config.torchrun
        if env is None:
            raise MaxError("run_tensor_parallel_rank needs RANK and WORLD_SIZE (as torchrun sets them)")
        rank, world, addr, port = env.rank, env.world_size, env.master_addr, env.master_port
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


def build_engine(resolved: ResolvedModel, proposer: DraftProposer | None = None) -> LLMEngine:
    """Loads the weights, sizes and allocates the KV cache, and returns a ready engine.

    With tensor parallelism this process is rank 0: it starts (or, under torchrun, meets)
    the other ranks, which build their shards alongside. `proposer` replaces the draft
    proposer of the config's speculative method (tests and benchmarks: the oracle).
    """
    config, plan = resolved.config, resolved.plan
    speculative = parse_speculative_config(config.speculative_config)
    eagle = None
    if speculative is not None and proposer is None:
        check_implemented(speculative)  # before the weights load: a usage error is quick
        if speculative.method == "draft_model":
            proposer = build_draft_model(speculative, resolved, build_rank)
        elif speculative.method in EAGLE_METHODS:
            eagle = EagleSetup(speculative, resolved)
    group = None
    if plan.tp_size > 1:
        if not resolved.architecture.multi_gpu_supported:
            raise MaxError(f"architecture {resolved.architecture.name} does not support tensor parallelism")
        group = start_tensor_parallel(config, resolved.architecture, run_tensor_parallel_rank)
    try:
        runner = build_rank(resolved, group, eagle.install if eagle is not None else None)
    except BaseException:
        if group is not None:
            group.close()
        raise
    if group is not None:
        runner = TensorParallelRunner(runner, group)
    vocab = int(text_config(resolved.hf_config).vocab_size)
    eos = resolved.eos_token_ids()

    def grammar() -> GrammarBackend:
        tokenizer = load_tokenizer(resolved)
        if tokenizer is None:
            raise MaxError("structured outputs need the model's tokenizer (--skip-tokenizer-init is set)")
        return GrammarBackend(tokenizer.hf, vocab, eos | tokenizer.eos_token_ids)

    if eagle is not None:
        proposer = eagle.proposer
    engine = LLMEngine(
        runner,
        config.max_batch_size,
        max(plan.token_budget, 1),
        eos,
        vocab,
        config.enable_prefix_caching,
        async_scheduling=plan.async_scheduling,
        grammar=grammar,
        # Where a step is short enough for a collection's pause to show (the GPU's).
        freeze_startup_objects=plan.on_gpu,
        speculative_config=speculative,
        proposer=proposer,
    )
    engine.scheduler.policy = config.scheduling_policy
    if config.task == "embed":
        engine.pooling = embedding_pooling(resolved, runner.model)
    if config.enable_lora:
        enable_lora(engine, config)
    return engine


def embedding_pooling(resolved: ResolvedModel, model: PipelineModel) -> PoolingConfig:
    """How the engine of a `--task embed` model pools (MaxError: a network that does not
    expose its final hidden states, or sentence-transformers modules we cannot reproduce)."""
    if not hasattr(model.model, "final_hidden"):
        raise MaxError(f"architecture {resolved.architecture.name} cannot serve embeddings (--task embed)")
    return read_pooling_config(resolved.source.directory, resolved.hf_config).with_projection(resolved.plan.device)
