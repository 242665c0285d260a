"""Resolving a `PipelineConfig`: find the model, read its config, pick its architecture,
settle `auto` into a concrete encoding and the whole run into an `ExecutionPlan`.

Cheap (no weights are read) and done wherever it is needed: the HTTP process resolves the
model to fail fast and to load the tokenizer; the engine process and every tensor-parallel
rank resolve it again from the pinned config (the Hub commit and the encoding fixed), and
`pipeline_builder` then loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from max.errors import MaxError
from max.nn.quantized_linear import int4_kernel
from max.pipelines.lib.config import (
    AUTO_ENCODING,
    FLOAT_ENCODINGS,
    WEIGHT_ONLY_SCHEMES,
    PipelineConfig,
)
from max.pipelines.lib.cpu_encoding_choice import choose_cpu_path, model_shapes
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
from max.pipelines.lib.model.registry import (
    PIPELINE_REGISTRY,
    PipelineRegistry,
    register_custom_architectures,
)
from max.pipelines.lib.model.supported_architecture import SupportedArchitecture
from max.pipelines.lib.plan import CPU_QUANTIZED_SCHEMES, ExecutionPlan, WeightScheme, resolve_plan
from max.pipelines.lib.pooling.causal_attention import check_causal_attention
from max.pipelines.lib.pooling.headless_checkpoint import tie_missing_head
from max.pipelines.lib.pooling.pooling_config import resolve_task
from max.pipelines.lib.tokens.tokenizer import TextTokenizer
from max.pipelines.lib.weights import GGUFFile, WeightsFormat
from max.pipelines.lib.weights.kv_cache_scales import resolve_kv_cache_dtype
from max.pipelines.lib.weights.quantization_config import read_quantization

logger = logging.getLogger("max.pipelines")


@dataclass
class ResolvedModel:
    """A model located and identified, with its pinned config and its execution plan; no
    weights loaded yet."""

    config: PipelineConfig
    source: ModelSource
    architecture: SupportedArchitecture
    hf_config: Any
    gguf: GGUFFile | None
    plan: ExecutionPlan

    @property
    def max_seq_len(self) -> int:
        """Longest prompt + output served."""
        return self.architecture.pipeline_model.calculate_max_seq_len(self.config, self.hf_config)

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype the model computes in."""
        return self.plan.dtype

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
    """Locates the model, reads its config, finds its architecture and resolves the plan.

    The returned `config` is `config` pinned: the Hub commit it resolved to and the
    encoding `auto` stood for, so that the processes started from it (engine, ranks,
    replicas) load the same files and compute the same way. `config` itself is unchanged.
    """
    config.validate()
    register_custom_architectures(config.custom_architectures, registry)
    auto = config.quantization_encoding == AUTO_ENCODING
    source = resolve_model_source(
        config.model_path, config.weight_path, config.load_format, config.revision,
        None if auto else config.quantization_encoding,
    )
    if source.commit is not None:
        config = dataclasses.replace(config, revision=source.commit)
    gguf = GGUFFile(source.gguf_file) if source.gguf_file is not None else None
    arch = registry.retrieve(architecture_name(source, gguf, config.hf_overrides))
    if source.weights_format not in arch.weight_adapters:
        raise MaxError(
            f"architecture {arch.name} cannot read {source.weights_format.value} weights "
            f"(it reads: {', '.join(f.value for f in arch.weight_adapters)})"
        )
    if auto:
        config = _resolve_auto(config, source, gguf, arch)
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
    hf_config = load_hf_config(source, config.trust_remote_code, gguf, config.hf_overrides)
    check_causal_attention(hf_config, arch.name)  # e.g. EmbeddingGemma: refused, not miscomputed
    # `--task auto` settles here too, pinned for the engine processes (`pooling_config`).
    task = resolve_task(config.task, source.directory, architecture_name(source, gguf, config.hf_overrides))
    if task != config.task:
        config = dataclasses.replace(config, task=task)
    if task == "embed" and source.weights_format == WeightsFormat.safetensors:
        tie_missing_head(hf_config, source.weight_files)  # a bare transformer: no head to load
    # A pre-quantized safetensors checkpoint says how in config.json (GGUF files carry their
    # own encodings); with --load-format dummy its layout gets random weights of that scheme.
    quant = read_quantization(hf_config) if source.weights_format == WeightsFormat.safetensors else None
    # `--kv-cache-dtype auto` is fp8 for a checkpoint calibrated for an FP8 KV cache (vLLM's rule).
    if source.weights_format == WeightsFormat.safetensors:
        kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, hf_config)
        if kv_dtype != config.kv_cache_dtype:
            config = dataclasses.replace(config, kv_cache_dtype=kv_dtype)
    plan = resolve_plan(config, arch.default_encoding, quant)
    return ResolvedModel(config, source, arch, hf_config, gguf, plan)


def gguf_weights_encoding(gguf: GGUFFile) -> str:
    """The encoding (lower-case GGML type name, e.g. `q4_1`) that holds most of a GGUF
    file's matrix elements."""
    counts: dict[str, int] = {}
    for info in gguf.tensors.values():
        if len(info.shape) == 2:
            name = info.type_name.lower()
            counts[name] = counts.get(name, 0) + info.shape[0] * info.shape[1]
    return max(counts, key=counts.get) if counts else "float32"


def _resolve_auto(config: PipelineConfig, source: ModelSource, gguf: GGUFFile | None, arch: SupportedArchitecture) -> PipelineConfig:
    """`config` with `--quantization-encoding auto` resolved: on the CPU the fastest way to
    hold the weights that passes verification on this machine, measured
    (`cpu_encoding_choice`, which may also set `--quantization`); elsewhere the
    device's default (None)."""
    if config.device.type != "cpu" or config.tp_size > 1:
        return dataclasses.replace(config, quantization_encoding=None)
    checkpoint = gguf_weights_encoding(gguf) if gguf is not None and config.load_format != "dummy" else None
    shapes = model_shapes(text_config(load_hf_config(source, config.trust_remote_code, gguf, config.hf_overrides)))
    # `--quantization` quantizes float weights: a quantized GGUF is then read as float.
    choice = choose_cpu_path(None if config.quantization else checkpoint, shapes)
    logger.info("%s", choice.describe())
    enc = choice.encoding
    if enc in FLOAT_ENCODINGS and enc not in arch.supported_encodings:
        return dataclasses.replace(config, quantization_encoding="float32")
    return dataclasses.replace(config, quantization_encoding=enc, quantization=config.quantization or choice.quantization)


def describe_encoding(resolved: ResolvedModel) -> str:
    """One line saying how the weights are held and what the model computes in."""
    plan = resolved.plan
    enc = resolved.config.quantization_encoding or "default"
    dt = str(plan.dtype).removeprefix("torch.")
    if plan.weight_scheme in CPU_QUANTIZED_SCHEMES:
        # Our CPU kernels (where they build) hold int8 in groups and compute the head in int8.
        ours = plan.weight_scheme != WeightScheme.INT8_DYNAMIC and int4_kernel() == "native" and plan.dtype == torch.bfloat16
        int8 = "int8 in groups of 32" if ours else "int8 per channel"
        held = {
            WeightScheme.INT8: int8,
            WeightScheme.INT4: f"int4 in groups of 32 ({int8} where the file has more bits)",
            WeightScheme.INT8_DYNAMIC: "int8 per channel, activations int8 per call (fbgemm)",
        }[plan.weight_scheme]
        tables = f"embeddings {dt}, LM head int8 in groups of 32" if ours else f"embeddings and LM head {dt}"
        kernels = "our CPU kernels" if ours else "torch's CPU kernels"
        return f"encoding {enc}: linear weights kept as {held}, {tables}, compute {dt}, {kernels}, on {plan.device}"
    quant = plan.checkpoint_quantization
    if quant is not None:
        if plan.weight_scheme == WeightScheme.FLOAT:
            return (
                f"checkpoint of {quant.describe()}: dequantized to {dt} on load (this device has no FP8 "
                f"tensor cores: the dequantizing fallback), compute {dt}, on {plan.device}"
            )
        held = "e4m3 (per-row scales), activations per token" if plan.weight_scheme == WeightScheme.FP8 else "int4 in groups"
        return f"checkpoint of {quant.describe()}: decoder linear weights kept {held}; embeddings and LM head {dt}, on {plan.device}"
    if plan.weight_scheme == WeightScheme.W8A16:
        return (
            f"encoding {enc}: linear weights, embeddings and LM head int8 in groups of 32 (those the file "
            f"stores in float: {dt}), compute {dt}, on {plan.device}"
        )
    if plan.weight_scheme == WeightScheme.W4A16:
        if enc in WEIGHT_ONLY_SCHEMES:
            return (
                f"encoding {enc}: linear weights, embeddings and LM head int4 in groups of 32 (the file's "
                f"wider ones int8, its float ones {dt}), compute {dt}, on {plan.device}"
            )
        how = "--quantization int4: decoder linear weights int4 in groups of 128"
        return f"{how}; embeddings and LM head {dt}, compute {dt}, on {plan.device}"
    if plan.weight_scheme == WeightScheme.FP8:
        return (
            f"encoding {enc} with --quantization fp8: decoder linear weights e4m3 per channel, activations "
            f"per token; embeddings and LM head {dt}, on {plan.device}"
        )
    return f"encoding {enc}: weights and compute {dt}, on {plan.device}"


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
