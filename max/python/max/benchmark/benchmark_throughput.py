"""Offline throughput benchmark: a workload run through the engine in-process, as
`vllm bench throughput` runs it, optionally next to transformers `generate`.

The requests of `--dataset random|sharegpt` (see benchmark_dataset) are all added at once,
or at `--request-rate` per second (Poisson arrivals), and run greedily with EOS ignored, so
each produces exactly its output length. Reports requests/s, output tokens/s, total
(prompt + output) tokens/s and the elapsed time; for a single request (`--num-prompts 1`)
also its time to first token and its decode speed after the first token.

`--backend hf` runs transformers `generate` on the same workload instead (batches of
`--hf-batch-size`, left-padded, greedy, min_new_tokens = max_new_tokens; a dummy model is
built from its config with random weights); `--backend both` runs ours, then transformers,
and prints both and their ratio. Every model and engine flag of `serve` applies
(--devices, --load-format, --quantization-encoding, --max-batch-size, ...).

    ./bazelw run //max/python/max/benchmark:benchmark_throughput -- \\
        --model-path max/python/max/benchmark/configs/Llama-3.1-8B --load-format dummy \\
        --devices gpu --num-prompts 1000 --random-input-len 1024 --random-output-len 128 \\
        --max-batch-size 256 --backend both --hf-batch-size 64 --result-file out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch

from max.benchmark.benchmark_dataset import SampleRequest, add_dataset_args, build_requests
from max.benchmark.image_workload import (
    add_image_args,
    add_random_images,
    parse_size,
    strip_image_tokens,
)
from max.entrypoints.process_setup import run_main
from max.entrypoints.tool_flags import add_result_file_arg
from max.errors import MaxError

BACKENDS = ("ours", "hf", "both")


@dataclass
class ThroughputResult:
    """One backend's run of the workload."""

    backend: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    load_s: float
    ttft_ms: float | None = None  # mean time to first token (single request: its TTFT)
    decode_tokens_per_s: float | None = None  # single request: output after the first token
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
        }


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags: the workload, the model and engine flags, the backends."""
    from max.entrypoints.cli_args import add_model_args

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(parser)
    add_image_args(parser)
    add_model_args(parser)
    g = parser.add_argument_group("benchmark")
    g.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals (default inf: all at once)")
    g.add_argument("--backend", choices=BACKENDS, default="ours", help="ours, hf (transformers) or both")
    g.add_argument("--hf-batch-size", type=int, help="transformers batch size (default: --max-batch-size)")
    g.add_argument("--num-warmups", type=int, default=1, help="short requests run before measuring (default 1)")
    add_result_file_arg(g)
    g.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    g.add_argument(
        "--step-stats", action="store_true", help="ours: record every step's kind, tokens, host ms and GPU span (see step_stats)"
    )
    g.add_argument(
        "--profile-kernels", type=int, default=0, metavar="N",
        help="ours: run the workload under torch.profiler (CUDA kernels only) and report GPU busy/idle and the top N kernels",
    )
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _arrival_times(count: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request arrives (all 0 for rate inf)."""
    if not math.isfinite(rate):
        return [0.0] * count
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=count)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


# -- ours ---------------------------------------------------------------------------------
def run_ours(resolved, requests: list[SampleRequest], args: argparse.Namespace) -> ThroughputResult:
    """The workload through `LLMEngine` (continuous batching)."""
    from tqdm import tqdm

    from max.pipelines.lib import SamplingParams, build_engine

    device = resolved.config.device
    start = time.perf_counter()
    engine = build_engine(resolved)
    _sync(device)
    load = time.perf_counter() - start
    too_long = next((r for r in requests if r.prompt_len + r.output_len > engine.max_seq_len), None)
    if too_long is not None:
        raise MaxError(
            f"a request of {too_long.prompt_len} prompt + {too_long.output_len} output tokens exceeds "
            f"the maximum length of {engine.max_seq_len}: raise --max-length or shorten the workload"
        )

    def params(output_len: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=output_len, temperature=0.0, ignore_eos=True)

    for i in range(args.num_warmups):
        warm = requests[i % len(requests)]
        engine.add_request(f"warmup-{i}", list(warm.prompt), params(min(warm.output_len, 4)), images=warm.images)
    while engine.has_unfinished():
        engine.step()
    _sync(device)
    # The warm-up ran prompts of the workload: their cached pages must not serve the
    # measured requests (the first one would skip most of its prefill).
    engine.kv_cache.pool.reset_prefix_cache()
    spec_before = engine.stats().spec_decode  # the warm-up's drafts are not the workload's

    # A vision-language model times its encoder: the measured run's share is reported.
    timer = getattr(engine.model, "encoder_timer", None)
    warm_encoder_s, warm_images = (timer.seconds, timer.images) if timer is not None else (0.0, 0)

    arrivals = _arrival_times(len(requests), args.request_rate, args.seed)
    added: dict[str, float] = {}
    first: dict[str, float] = {}
    finished: dict[str, float] = {}
    output_tokens = 0
    progress = tqdm(total=len(requests), disable=args.disable_tqdm, file=sys.stderr, desc="ours")
    next_index = 0
    recorder = None
    if args.step_stats:
        from max.pipelines.lib.engine.step_recorder import StepRecorder

        recorder = StepRecorder(engine)
    kernel_profile = None
    if args.profile_kernels and device.type == "cuda":
        from max.benchmark.step_stats import KernelProfile

        kernel_profile = KernelProfile(args.profile_kernels).__enter__()
    start = time.perf_counter()
    while next_index < len(requests) or engine.has_unfinished():
        now = time.perf_counter()
        while next_index < len(requests) and arrivals[next_index] <= now - start:
            request_id = str(next_index)
            sample = requests[next_index]
            engine.add_request(request_id, list(sample.prompt), params(sample.output_len), images=sample.images)
            added[request_id] = now
            next_index += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, start + arrivals[next_index] - time.perf_counter()))
            continue
        for out in engine.step():
            if out.error:
                raise MaxError(f"request {out.request_id} failed: {out.error}")
            if out.new_token_ids:
                output_tokens += len(out.new_token_ids)
                first.setdefault(out.request_id, time.perf_counter())
            if out.finished:
                finished[out.request_id] = time.perf_counter()
                progress.update(1)
    end_event = None
    if recorder is not None and device.type == "cuda":
        end_event = torch.cuda.Event(enable_timing=True)
        end_event.record()
    _sync(device)
    elapsed = time.perf_counter() - start
    progress.close()
    extra: dict[str, Any] = {"num_preemptions": engine.stats().num_preemptions}
    if engine.speculator is not None:
        extra["spec_decode"] = (engine.stats().spec_decode - spec_before).to_json()
    report = getattr(engine.model, "memory_report", None)
    if report is not None:
        extra["memory_bytes"] = report.components()  # weights, load peak, KV cache, graphs...
    if kernel_profile is not None:
        kernel_profile.__exit__(None, None, None)
        extra["kernel_profile"] = kernel_profile.summary()
    if recorder is not None:
        extra["step_stats"] = recorder.summarize(end_event)
        recorder.close()
    ttfts = [first[r] - added[r] for r in first]
    result = ThroughputResult(
        backend="ours",
        num_requests=len(requests),
        prompt_tokens=sum(r.prompt_len for r in requests),
        output_tokens=output_tokens,
        elapsed_s=elapsed,
        load_s=load,
        ttft_ms=1000.0 * float(np.mean(ttfts)) if ttfts else None,
        extra=extra,
    )
    if timer is not None and timer.images > warm_images:
        encoder_s = timer.seconds - warm_encoder_s
        result.extra.update(vision_encoder_s=encoder_s, vision_encoder_share=encoder_s / elapsed, images=timer.images - warm_images)
    if len(requests) == 1 and output_tokens > 1:
        result.decode_tokens_per_s = (output_tokens - 1) / (finished["0"] - first["0"])
    engine.close()  # the other tensor-parallel ranks, if any
    return result


# -- transformers -------------------------------------------------------------------------
class _FirstTokenTimer:
    """A transformers streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # the first call carries the prompt
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def load_hf_model(resolved):
    """transformers' model for the same checkpoint (random weights for a dummy load)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    device, dtype = resolved.config.device, resolved.dtype
    source = resolved.source
    if resolved.config.load_format == "dummy":
        torch.manual_seed(resolved.config.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(resolved.hf_config, dtype=dtype)
    else:
        kwargs = {"gguf_file": source.gguf_file.name} if source.gguf_file is not None else {}
        model = AutoModelForCausalLM.from_pretrained(
            str(source.directory),
            dtype=dtype,
            trust_remote_code=resolved.config.trust_remote_code,
            local_files_only=True,
            **kwargs,
        ).to(device)
    return model.eval()


def _pad_id(hf_config) -> int:
    pad = getattr(hf_config, "pad_token_id", None)
    if pad is None:
        eos = getattr(hf_config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return int(pad) if pad is not None else 0


def run_hf(resolved, requests: list[SampleRequest], args: argparse.Namespace) -> ThroughputResult:
    """The workload through transformers `generate`, in left-padded batches."""
    from tqdm import tqdm

    device = resolved.config.device
    start = time.perf_counter()
    model = load_hf_model(resolved)
    _sync(device)
    load = time.perf_counter() - start
    pad = _pad_id(resolved.hf_config)
    batch_size = args.hf_batch_size or args.max_batch_size

    @torch.inference_mode()
    def generate(batch: list[SampleRequest], new_tokens: int, streamer=None) -> int:
        width = max(r.prompt_len for r in batch)
        ids = torch.tensor([[pad] * (width - r.prompt_len) + list(r.prompt) for r in batch], device=device)
        mask = torch.tensor([[0] * (width - r.prompt_len) + [1] * r.prompt_len for r in batch], device=device)
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            streamer=streamer,
        )
        return out.shape[1] - width

    for i in range(args.num_warmups):
        generate([requests[i % len(requests)]], min(requests[i % len(requests)].output_len, 4))
    _sync(device)
    progress = tqdm(total=len(requests), disable=args.disable_tqdm, file=sys.stderr, desc="transformers")
    timer = _FirstTokenTimer() if len(requests) == 1 else None
    start = time.perf_counter()
    for b in range(0, len(requests), batch_size):
        batch = requests[b : b + batch_size]
        generate(batch, max(r.output_len for r in batch), timer)
        progress.update(len(batch))
    _sync(device)
    elapsed = time.perf_counter() - start
    progress.close()
    # Each request counts the tokens it asked for: a batch runs to its longest request, and
    # the extra tokens of the shorter ones are transformers' padding cost, not output.
    output_tokens = sum(r.output_len for r in requests)
    result = ThroughputResult(
        backend="hf",
        num_requests=len(requests),
        prompt_tokens=sum(r.prompt_len for r in requests),
        output_tokens=output_tokens,
        elapsed_s=elapsed,
        load_s=load,
        extra={"hf_batch_size": batch_size},
    )
    if timer is not None and timer.first is not None:
        result.ttft_ms = 1000.0 * (timer.first - start)
        if output_tokens > 1:
            result.decode_tokens_per_s = (output_tokens - 1) / (start + elapsed - timer.first)
    return result


# -- the run ------------------------------------------------------------------------------
def _workload(resolved, args: argparse.Namespace) -> list[SampleRequest]:
    """The requests, with token-id prompts (ShareGPT text is tokenized here)."""
    from max.pipelines.lib import load_tokenizer
    from max.pipelines.lib.hub.hf_config import text_config

    tokenizer = None
    if args.dataset == "sharegpt":
        if resolved.config.skip_tokenizer_init:
            raise MaxError("--dataset sharegpt needs a tokenizer (drop --skip-tokenizer-init)")
        try:
            tokenizer = load_tokenizer(resolved)
        except MaxError as e:
            raise MaxError(f"--dataset sharegpt needs a tokenizer: {e}") from None
    requests = build_requests(args, int(text_config(resolved.hf_config).vocab_size), tokenizer)
    for r in requests:
        if isinstance(r.prompt, str):
            r.prompt = tokenizer.encode(r.prompt)
            r.prompt_len = len(r.prompt)
    strip_image_tokens(requests, resolved.hf_config)
    if args.random_images_per_prompt:
        if args.dataset != "random" or args.backend != "ours":
            raise MaxError("--random-images-per-prompt goes with --dataset random and --backend ours")
        size = parse_size(args.random_image_size)
        add_random_images(requests, resolved.hf_config, args.random_images_per_prompt, size, args.seed)
    return requests


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_results(results: list[ThroughputResult]) -> str:
    """A Markdown table of the backends, plus their ratio when there are two."""
    single = all(r.num_requests == 1 for r in results)
    header = "| backend | requests | elapsed (s) | requests/s | output tokens/s | total tokens/s | load (s) |"
    if single:
        header += " TTFT (ms) | decode tokens/s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        row = (
            f"| {r.backend} | {r.num_requests} | {r.elapsed_s:.2f} | {r.requests_per_s:.2f} | "
            f"{r.output_tokens_per_s:.1f} | {r.total_tokens_per_s:.1f} | {r.load_s:.2f} |"
        )
        if single:
            ttft = f"{r.ttft_ms:.1f}" if r.ttft_ms is not None else ""
            decode = f"{r.decode_tokens_per_s:.1f}" if r.decode_tokens_per_s is not None else ""
            row += f" {ttft} | {decode} |"
        lines.append(row)
    if len(results) == 2:
        ours, hf = results
        lines.append("")
        lines.append(f"ours / transformers, output tokens/s: {ours.output_tokens_per_s / hf.output_tokens_per_s:.2f}x")
        if single and ours.decode_tokens_per_s and hf.decode_tokens_per_s:
            lines.append(f"ours / transformers, decode tokens/s: {ours.decode_tokens_per_s / hf.decode_tokens_per_s:.2f}x")
    return "\n".join(lines)


def format_spec_decode(spec: dict[str, Any]) -> str:
    """One line of speculative decoding's counts (vLLM's spec_decode metrics)."""
    per_pos = ", ".join(str(n) for n in spec["accepted_per_pos"])
    return (
        f"speculative decoding: {spec['num_drafts']} drafts, {spec['num_draft_tokens']} draft tokens, "
        f"{spec['num_accepted_tokens']} accepted (acceptance rate {spec['acceptance_rate']:.3f}, "
        f"mean accepted length {spec['mean_accepted_length']:.2f}); accepted per position: {per_pos}"
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen backends on the workload; prints the table (and writes JSON)."""
    args = build_parser().parse_args(argv)
    # Online by default like `serve` (HF_HUB_OFFLINE=1 keeps to the local cache).
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    from max.entrypoints.cli_args import pipeline_config_from_args
    from max.pipelines.architectures import register_all
    from max.pipelines.lib import resolve_model

    if args.request_rate <= 0:
        raise MaxError("--request-rate must be positive (inf: all at once)")
    if args.hf_batch_size is not None and args.hf_batch_size < 1:
        raise MaxError("--hf-batch-size must be at least 1")
    resolved = resolve_model(pipeline_config_from_args(args), register_all())
    config = resolved.config  # pinned: the encoding `auto` resolved to, the Hub commit
    requests = _workload(resolved, args)
    print(
        f"model: {resolved.source.name} ({resolved.architecture.name}, {config.load_format} weights); "
        f"device: {config.devices}; dtype: {resolved.dtype}; {len(requests)} requests",
        file=sys.stderr,
    )
    results = []
    if args.backend in ("ours", "both"):
        results.append(run_ours(resolved, requests, args))
        _free_device_memory(config.device)
    if args.backend in ("hf", "both"):
        results.append(run_hf(resolved, requests, args))
        _free_device_memory(config.device)
    print(format_results(results))
    for r in results:
        if "spec_decode" in r.extra:
            print(format_spec_decode(r.extra["spec_decode"]))
    for r in results:
        if "step_stats" in r.extra or "kernel_profile" in r.extra:
            from max.benchmark.step_stats import format_stats

            print(format_stats(r.extra))
    if args.result_file:
        record: dict[str, Any] = {
            "date": datetime.now().isoformat(timespec="seconds"),
            "model": resolved.source.name,
            "architecture": resolved.architecture.name,
            "load_format": config.load_format,
            "devices": config.devices,
            "dtype": str(resolved.dtype).removeprefix("torch."),
            "dataset": args.dataset,
            "num_prompts": len(requests),
            "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
            "max_batch_size": config.max_batch_size,
            "max_num_batched_tokens": resolved.plan.token_budget,
            "seed": args.seed,
            "pipeline_config": asdict(config),  # every engine setting (flags included)
            "results": {r.backend: r.to_json() for r in results},
        }
        if len(results) == 2:
            record["ratio_ours_over_hf"] = results[0].output_tokens_per_s / results[1].output_tokens_per_s
        with open(args.result_file, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
